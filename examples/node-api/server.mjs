// The countries API in Node: the same routes and answers as examples/countries_api.py, trusting
// only tokens minted by token-exchange, bearer or DPoP-bound (verify.mjs). Run it next to
// `token-exchange dev`:
//
//   cd examples/node-api && npm install && node server.mjs --sts http://127.0.0.1:8080 --port 8082
//
// GET /countries/<code> needs scope countries:read and <code> in the token's
// custom_access_to_countries claim. --public-url is the URL clients call (behind a proxy, the
// proxy's): DPoP proofs name it (htu). It defaults to http://127.0.0.1:<port>.
import { createServer } from "node:http";
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";

import {
  VerificationError,
  createVerifier,
  protectedResourceMetadata,
  requestOf,
  resourceMetadataUrl,
} from "./verify.mjs";

export const AUDIENCE = "https://countries.example.test";
const COUNTRIES = {
  nl: { name: "Netherlands", capital: "Amsterdam" },
  de: { name: "Germany", capital: "Berlin" },
  be: { name: "Belgium", capital: "Brussels" },
  fr: { name: "France", capital: "Paris" },
};

function send(res, status, body, headers = {}) {
  res.writeHead(status, { "Content-Type": "application/json", "Cache-Control": "no-store", ...headers });
  res.end(JSON.stringify(body));
}

/** The API as a node:http server, verifying the tokens of the token service at `sts`. */
export function createApi({
  sts,
  publicUrl,
  audience = AUDIENCE,
  verifier = createVerifier({ issuer: sts, audience, resourceMetadata: resourceMetadataUrl(audience) }),
}) {
  // RFC 9728: the API's metadata names the token service as its authorization server.
  const metadataPath = new URL(resourceMetadataUrl(audience)).pathname;
  const metadata = protectedResourceMetadata({ resource: audience, issuer: sts, scopes: ["countries:read"] });
  async function handle(req, res) {
    const path = new URL(req.url, publicUrl).pathname;
    if (req.method === "GET" && path === metadataPath) {
      return send(res, 200, metadata, { "Cache-Control": "max-age=300", "Access-Control-Allow-Origin": "*" });
    }
    const match = /^\/countries\/([a-z]{2})$/.exec(path);
    if (req.method !== "GET" || !match) return send(res, 404, { error: "not_found" });
    let claims;
    try {
      claims = await verifier.verify(requestOf(req, publicUrl), { scope: "countries:read" });
    } catch (err) {
      if (!(err instanceof VerificationError)) throw err;
      const headers = err.challenge ? { "WWW-Authenticate": err.challenge } : {};
      if (err.status === 503) headers["Retry-After"] = "5";
      return send(res, err.status, err.error ? { error: err.error } : { error: "unauthorized" }, headers);
    }
    const scopes = typeof claims.scope === "string" ? claims.scope.split(" ") : [];
    if (!scopes.includes("countries:read")) {
      const scheme = claims.cnf ? "DPoP" : "Bearer";
      return send(res, 403, { error: "insufficient_scope" }, {
        "WWW-Authenticate": `${scheme} error="insufficient_scope", scope="countries:read", resource_metadata="${resourceMetadataUrl(audience)}"`,
      });
    }
    const [, code] = match;
    const allowed = Array.isArray(claims.custom_access_to_countries) ? claims.custom_access_to_countries : [];
    if (!allowed.includes(code)) return send(res, 403, { error: "forbidden", error_description: `no access to ${code}` });
    if (!(code in COUNTRIES)) return send(res, 404, { error: "not_found" });
    return send(res, 200, { code, ...COUNTRIES[code], viewer: claims.sub });
  }
  return createServer((req, res) => {
    handle(req, res).catch(() => {
      // Never a stack trace to the caller.
      if (!res.headersSent) send(res, 500, { error: "server_error" });
      else res.destroy();
    });
  });
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { values } = parseArgs({
    options: {
      sts: { type: "string", default: "http://127.0.0.1:8080" },
      port: { type: "string", default: "8082" },
      "public-url": { type: "string" },
    },
  });
  const port = Number(values.port);
  const publicUrl = values["public-url"] ?? `http://127.0.0.1:${port}`;
  createApi({ sts: values.sts, publicUrl }).listen(port, "127.0.0.1", () => {
    console.log(`countries API (Node) on http://127.0.0.1:${port}, public URL ${publicUrl}, tokens of ${values.sts}`);
  });
}
