// Checking a Txn-Token (draft-ietf-oauth-transaction-tokens-10 §7) with jose: exactly one
// `Txn-Token` header, signed by a key of the token service's JWKS, `typ` txntoken+jwt, `iss`
// the token service, `aud` the trust domain, unexpired. Never the Authorization header: an
// access token is no Txn-Token (its typ is at+jwt, its aud an API), nor the reverse.
import { createRemoteJWKSet, jwtVerify } from "jose";

export function txnTokenVerifier({ sts, trustDomain }) {
  const jwks = createRemoteJWKSet(new URL(`${sts}/.well-known/jwks.json`));
  return async function verify(request) {
    // headersDistinct keeps a repeated header as two values (headers would join them).
    const values = request.headersDistinct["txn-token"] ?? [];
    if (values.length !== 1 || !/^[A-Za-z0-9_.-]+$/.test(values[0])) {
      throw new Error("exactly one Txn-Token header is required");
    }
    const { payload } = await jwtVerify(values[0], jwks, {
      typ: "txntoken+jwt",
      issuer: sts,
      audience: trustDomain,
      algorithms: ["ES256", "RS256", "PS256", "EdDSA"],
      requiredClaims: ["iat", "exp", "txn", "sub", "scope", "req_wl"],
      clockTolerance: 5,
    });
    for (const claim of ["txn", "sub", "scope", "req_wl"]) {
      if (typeof payload[claim] !== "string") throw new Error(`invalid ${claim}`);
    }
    return {
      ...payload,
      scopes: new Set(payload.scope.split(" ")),
      tctx: payload.tctx ?? {},
      rctx: payload.rctx ?? {},
    };
  };
}
