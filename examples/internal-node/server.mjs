// An example internal service of the trust domain, in Node: GET /stats/<code> within a
// transaction, with the Txn-Token checked by ./txn-token.mjs (jose).
//
//   node server.mjs --sts http://127.0.0.1:8080 --trust-domain trust-domain.example --port 8083
import http from "node:http";
import { parseArgs } from "node:util";
import { txnTokenVerifier } from "./txn-token.mjs";

const { values: args } = parseArgs({
  options: {
    sts: { type: "string", default: "http://127.0.0.1:8080" },
    "trust-domain": { type: "string", default: "trust-domain.example" },
    port: { type: "string", default: "8083" },
  },
});
const verify = txnTokenVerifier({ sts: args.sts, trustDomain: args["trust-domain"] });
const STATS = { nl: 17_900_000, de: 84_500_000, be: 11_800_000, fr: 68_200_000 };

function send(response, status, body) {
  response.writeHead(status, { "Content-Type": "application/json", "Cache-Control": "no-store" });
  response.end(JSON.stringify(body));
}

const server = http.createServer(async (request, response) => {
  const match = /^\/stats\/([a-z]{2})$/.exec(new URL(request.url, "http://x").pathname);
  if (request.method !== "GET" || !match) return send(response, 404, { error: "not_found" });
  let txn;
  try {
    txn = await verify(request);
  } catch (error) {
    return send(response, 403, { error: "invalid_token", error_description: error.message });
  }
  if (!txn.scopes.has("countries:read")) return send(response, 403, { error: "insufficient_scope" });
  const code = match[1];
  const allowed = txn.tctx.custom_access_to_countries;
  if (!Array.isArray(allowed) || !allowed.includes(code)) {
    return send(response, 403, { error: "forbidden", error_description: `no access to ${code}` });
  }
  if (!(code in STATS)) return send(response, 404, { error: "not_found" });
  send(response, 200, { code, population: STATS[code], sub: txn.sub, txn: txn.txn, req_wl: txn.req_wl });
});

server.listen(Number(args.port), "127.0.0.1", () => {
  console.log(`internal service (Node) listening on http://127.0.0.1:${args.port}`);
});
