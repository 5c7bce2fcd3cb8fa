// Verifying token-exchange's tokens in a Node API: RFC 9068 JWT access tokens, bearer or
// DPoP-bound (RFC 9449), with oauth4webapi's validateJwtAccessToken (panva, no dependencies).
//
// Why not jose's jwtVerify alone: it checks the signature and the claims, and never looks at
// `cnf`. A DPoP-bound token (`cnf.jkt`, what the example SPA gets by default) would be accepted
// as a bearer token, so whoever copied it could use it. validateJwtAccessToken checks, for a
// token with `cnf.jkt` (or sent as `Authorization: DPoP`, or with a `DPoP` header): exactly one
// proof in the `DPoP` header, `typ: dpop+jwt`, signed by the key whose thumbprint is `cnf.jkt`,
// `htm` = the method, `htu` = the URL without query and fragment, `ath` = the token's hash,
// `iat` within 300 s; and the `DPoP` scheme. What it does not do is remember proofs: a proof
// replayed within its 300 s would pass again. `createVerifier` adds that (RFC 9449 §11.1), with
// an in-memory record by default: give it a shared one (`replay`) when the API runs as more
// than one process.
import * as oauth from "oauth4webapi";

// What token-exchange signs with ([signing] algorithm) and accepts in DPoP proofs ([dpop]
// algorithms); oauth4webapi applies one list to both. Asymmetric only: never "none", never HMAC.
export const SIGNING_ALGORITHMS = ["ES256", "RS256", "PS256", "EdDSA"];
// Longest a call to the token service (metadata, JWKS) may take.
const TIMEOUT_MS = 5000;
// How long a proof's jti is remembered: longer than oauth4webapi accepts a proof (its iat
// within 300 s either way, plus its clock tolerance).
const REPLAY_TTL_S = 660;

/** A refused request: its HTTP status, RFC 6750 / RFC 9449 error code and challenge. */
export class VerificationError extends Error {
  constructor(status, error, challenge) {
    super(error ?? "no credentials");
    this.status = status;
    this.error = error;
    this.challenge = challenge;
  }
}

/** The token service did not answer, or not in time: 503, never a refusal of the token. */
class Unavailable extends Error {}

/**
 * Proofs seen, in this process's memory; `firstUse` is false for a jti seen before. At most
 * `maxEntries` at once (expired ones dropped in the order they expire): when full of live
 * ones, a new proof cannot be recorded and is refused (fail closed), so that proofs made up by
 * a holder of a bound token cannot grow it, nor the work per request, without bound.
 */
export function memoryReplayCache(now = () => Date.now(), maxEntries = 100_000) {
  const seen = new Map(); // key -> expiry (ms), in the order they were added (same TTL: expiry order)
  return {
    async firstUse(key, ttlSeconds) {
      const time = now();
      for (const [old, expiry] of seen) {
        if (expiry > time) break; // the rest expire later
        seen.delete(old);
      }
      if (seen.has(key)) return false;
      if (seen.size >= maxEntries) throw new Error("the replay cache is full");
      seen.set(key, time + ttlSeconds * 1000);
      return true;
    },
  };
}

/**
 * RFC 9728 §3.1: where a resource's protected-resource metadata is, the well-known path inserted
 * between the host and the resource identifier's path (a slash after the host dropped first).
 */
export function resourceMetadataUrl(resource) {
  const url = new URL(resource);
  if (url.hash || !["https:", "http:"].includes(url.protocol)) throw new Error(`not a resource identifier: ${resource}`);
  const path = url.pathname.replace(/\/+$/, "");
  return `${url.origin}/.well-known/oauth-protected-resource${path}${url.search}`;
}

/** The RFC 9728 §2 document of an API whose tokens token-exchange at `issuer` mints. */
export function protectedResourceMetadata({ resource, issuer, scopes = [], algorithms = SIGNING_ALGORITHMS }) {
  return {
    resource,
    authorization_servers: [issuer],
    bearer_methods_supported: ["header"],
    dpop_signing_alg_values_supported: algorithms,
    ...(scopes.length ? { scopes_supported: scopes } : {}),
  };
}

function isLoopback(url) {
  return ["127.0.0.1", "localhost", "[::1]"].includes(url.hostname);
}

async function boundedFetch(url, options) {
  let response;
  try {
    response = await fetch(url, { ...options, signal: AbortSignal.timeout(TIMEOUT_MS) });
  } catch (cause) {
    throw new Unavailable("the token service did not answer", { cause });
  }
  if (response.status >= 500 || response.status === 429) {
    throw new Unavailable(`the token service answered ${response.status}`);
  }
  return response;
}

// Whether the proof, not the token, failed (RFC 9449 §7.1's invalid_dpop_proof; 401 either
// way). oauth4webapi has no error code for it: its proof errors name DPoP (a missing or bad
// proof, the wrong scheme), the confirmation (a proof by another key), or carry the proof's
// claims (htm, htu, ...).
function proofAtFault(err) {
  return /DPoP|confirmation mismatch/.test(String(err?.message)) || typeof err?.cause?.claims?.htm === "string";
}

function proofClaims(proof) {
  return JSON.parse(Buffer.from(proof.split(".")[1], "base64url").toString());
}

/**
 * A verifier of the tokens token-exchange at `issuer` mints for `audience`: its RFC 8414
 * metadata is fetched at the first request (again after a failure), its JWKS cached by
 * oauth4webapi (refreshed after 5 minutes; an unknown kid refetches it at most once a minute).
 * `verify(request)` takes a fetch `Request` whose URL is the public URL the client called.
 */
export function createVerifier({
  issuer,
  audience,
  replay = memoryReplayCache(),
  algorithms = SIGNING_ALGORITHMS,
  resourceMetadata = null, // the URL of the API's RFC 9728 metadata, named in every challenge
}) {
  const issuerUrl = new URL(issuer);
  const options = {
    [oauth.customFetch]: boundedFetch,
    // Plain http only for a token service on this machine (token-exchange dev).
    ...(issuerUrl.protocol === "http:" && isLoopback(issuerUrl) ? { [oauth.allowInsecureRequests]: true } : {}),
  };
  let metadata = null;
  function discover() {
    metadata ??= oauth
      .discoveryRequest(issuerUrl, { algorithm: "oauth2", ...options })
      .then((response) => oauth.processDiscoveryResponse(issuerUrl, response))
      .catch((cause) => {
        metadata = null; // try again at the next request
        throw cause instanceof Unavailable ? cause : new Unavailable("no metadata", { cause });
      });
    return metadata;
  }
  const algs = algorithms.join(" ");

  // `scope`: what the operation needs, named in a 401's challenge (RFC 6750 §3, RFC 9728 §5.1).
  async function verify(request, { scope = null } = {}) {
    const authorization = request.headers.get("authorization");
    const scheme = (authorization ?? "").split(" ")[0].toLowerCase();
    const extra = [scope && `scope="${scope}"`, resourceMetadata && `resource_metadata="${resourceMetadata}"`]
      .filter(Boolean)
      .join(", ");
    const withExtra = (params) => [params, extra].filter(Boolean).join(", ");
    // RFC 9449 §7.1: say which schemes are accepted, and which proof algorithms.
    const dpopChallenge = (error) => `DPoP ${withExtra(`error="${error}", algs="${algs}"`)}`;
    const challenge = (error) =>
      scheme === "dpop" || request.headers.has("dpop") ? dpopChallenge(error) : `Bearer ${withExtra(`error="${error}"`)}`;
    if (!authorization) {
      const bearer = extra ? `Bearer ${extra}` : "Bearer";
      throw new VerificationError(401, null, `${bearer}, DPoP ${withExtra(`algs="${algs}"`)}`);
    }
    let claims;
    try {
      claims = await oauth.validateJwtAccessToken(await discover(), request, audience, {
        ...options,
        signingAlgorithms: algorithms,
        requireDPoP: false, // a bearer token stays usable; a bound one must come with its proof
      });
    } catch (err) {
      if (err instanceof Unavailable) throw new VerificationError(503, "temporarily_unavailable");
      const error = proofAtFault(err) ? "invalid_dpop_proof" : "invalid_token";
      throw new VerificationError(401, error, error === "invalid_dpop_proof" ? dpopChallenge(error) : challenge(error));
    }
    if (claims.cnf?.jkt !== undefined) {
      // The proof is valid for this request (checked above); now make sure it is its first use.
      const { jti } = proofClaims(request.headers.get("dpop"));
      let first;
      try {
        first = await replay.firstUse(`${claims.cnf.jkt}:${jti}`, REPLAY_TTL_S);
      } catch {
        // A use that cannot be recorded could be a replay: fail closed.
        throw new VerificationError(503, "temporarily_unavailable");
      }
      if (!first) {
        throw new VerificationError(401, "invalid_dpop_proof", dpopChallenge("invalid_dpop_proof"));
      }
    }
    return claims;
  }

  return { verify };
}

/**
 * A node:http request as the fetch `Request` oauth4webapi checks: method, headers, and the URL
 * under `publicUrl` (the API's own public origin, never the Host header the caller sent: a
 * proof's htu is compared with it). Repeated Authorization or DPoP headers are refused.
 */
export function requestOf(req, publicUrl) {
  // Origin-form only ("/path?query"): an absolute-form request line ("GET http://evil.test/x")
  // would otherwise put the caller's origin into the URL a proof's htu is compared with.
  if (typeof req.url !== "string" || !req.url.startsWith("/") || req.url.startsWith("//")) {
    throw new VerificationError(400, "invalid_request", `Bearer error="invalid_request"`);
  }
  for (const name of ["authorization", "dpop"]) {
    if ((req.headersDistinct[name]?.length ?? 0) > 1) {
      throw new VerificationError(400, "invalid_request", `Bearer error="invalid_request"`);
    }
  }
  const headers = new Headers();
  for (const [name, values] of Object.entries(req.headersDistinct)) {
    for (const value of values) headers.append(name, value);
  }
  return new Request(new URL(new URL(publicUrl).origin + req.url), { method: req.method, headers });
}
