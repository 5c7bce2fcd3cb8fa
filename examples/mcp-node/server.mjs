// An MCP server in Node (npm @modelcontextprotocol/sdk, Streamable HTTP, stateless) that trusts
// only tokens token-exchange minted for it: the SDK's own requireBearerAuth middleware, with a
// verifier that checks our tokens with jose (RFC 9068: typ at+jwt, iss, aud = this server, exp,
// an asymmetric algorithm, our JWKS). Run it next to token-exchange (an [[apis]] entry whose
// audience is this server's URL):
//
//   cd examples/mcp-node && npm ci && node server.mjs --sts http://127.0.0.1:8080 --port 8084
//
// Tool `country` needs scope countries:read and the code in the token's
// custom_access_to_countries claim (the per-request permissions answer the token carries).
// DPoP-bound tokens (cnf) are refused: requireBearerAuth takes bearer tokens only, and jose never
// checks a proof (examples/node-api shows a DPoP-aware verifier).
import { pathToFileURL } from "node:url";
import { parseArgs } from "node:util";

import { InvalidTokenError, ServerError } from "@modelcontextprotocol/sdk/server/auth/errors.js";
import { requireBearerAuth } from "@modelcontextprotocol/sdk/server/auth/middleware/bearerAuth.js";
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import express from "express";
import { createRemoteJWKSet, errors, jwtVerify } from "jose";
import { z } from "zod";

const SCOPE = "countries:read";
// What token-exchange signs with ([signing] algorithm): asymmetric only, never "none" or HMAC.
const ALGORITHMS = ["ES256", "RS256", "PS256", "EdDSA"];
const COUNTRIES = {
  nl: { name: "Netherlands", capital: "Amsterdam" },
  de: { name: "Germany", capital: "Berlin" },
  be: { name: "Belgium", capital: "Brussels" },
  fr: { name: "France", capital: "Paris" },
};

/** RFC 9728 §3.1: the well-known path inserted between the host and the resource's path. */
export function resourceMetadataUrl(resource) {
  const url = new URL(resource);
  return `${url.origin}/.well-known/oauth-protected-resource${url.pathname.replace(/\/+$/, "")}`;
}

/** requireBearerAuth's verifier for tokens of token-exchange at `issuer` for `resource`. */
export function tokenExchangeVerifier({ issuer, resource, jwksUri }) {
  // Cached; an unknown kid refetches at most every 30 s; a fetch takes at most 5 s.
  const jwks = createRemoteJWKSet(new URL(jwksUri), { timeoutDuration: 5000, cooldownDuration: 30_000 });
  return {
    async verifyAccessToken(token) {
      let payload;
      try {
        ({ payload } = await jwtVerify(token, jwks, {
          issuer,
          audience: resource,
          typ: "at+jwt", // RFC 9068 §4: an ID token or another JWT is not an access token
          algorithms: ALGORITHMS,
          requiredClaims: ["exp", "iat", "jti", "sub", "client_id"],
          clockTolerance: 30,
        }));
      } catch (err) {
        if (err instanceof errors.JWKSTimeout || err?.name === "TypeError") {
          throw new ServerError("the token service's keys cannot be fetched");
        }
        throw new InvalidTokenError("the access token is not acceptable");
      }
      if (payload.cnf !== undefined) {
        // A bound token sent as a bearer token: whoever copied it could use it (RFC 9449 §7.1).
        throw new InvalidTokenError("a DPoP-bound token must be sent with its proof");
      }
      return {
        token,
        clientId: String(payload.client_id),
        scopes: typeof payload.scope === "string" ? payload.scope.split(" ") : [],
        expiresAt: payload.exp,
        resource: new URL(resource),
        extra: { claims: payload },
      };
    },
  };
}

function mcpServer() {
  const server = new McpServer({ name: "countries", version: "1.0.0" });
  server.registerTool(
    "country",
    { description: "A country the signed-in user may see (by ISO code)", inputSchema: { code: z.string() } },
    async ({ code }, extra) => {
      const claims = extra.authInfo?.extra?.claims ?? {};
      const allowed = Array.isArray(claims.custom_access_to_countries) ? claims.custom_access_to_countries : [];
      if (!allowed.includes(code) || !(code in COUNTRIES)) {
        return { isError: true, content: [{ type: "text", text: `no access to ${code}` }] };
      }
      const country = { code, ...COUNTRIES[code], viewer: claims.sub };
      return { content: [{ type: "text", text: JSON.stringify(country) }], structuredContent: country };
    },
  );
  return server;
}

/** The express app: the MCP endpoint at the resource's path, and its RFC 9728 metadata. */
export function createApp({ sts, resource, jwksUri = `${sts}/.well-known/jwks.json` }) {
  const metadataUrl = resourceMetadataUrl(resource);
  const auth = requireBearerAuth({
    verifier: tokenExchangeVerifier({ issuer: sts, resource, jwksUri }),
    requiredScopes: [SCOPE],
    resourceMetadataUrl: metadataUrl,
    expectedResource: new URL(resource),
  });
  const app = express();
  app.disable("x-powered-by");
  app.get(new URL(metadataUrl).pathname, (_req, res) => {
    res.set("Access-Control-Allow-Origin", "*").json({
      resource,
      authorization_servers: [sts],
      bearer_methods_supported: ["header"],
      scopes_supported: [SCOPE],
    });
  });
  app.post(new URL(resource).pathname, express.json({ limit: "256kb" }), auth, async (req, res) => {
    const server = mcpServer();
    const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
    res.on("close", () => {
      transport.close();
      server.close();
    });
    await server.connect(transport);
    await transport.handleRequest(req, res, req.body);
  });
  return app;
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const { values } = parseArgs({
    options: {
      sts: { type: "string", default: "http://127.0.0.1:8080" },
      port: { type: "string", default: "8084" },
      resource: { type: "string" },
      "jwks-uri": { type: "string" },
    },
  });
  const port = Number(values.port);
  const resource = values.resource ?? `http://127.0.0.1:${port}/mcp`;
  const app = createApp({ sts: values.sts, resource, jwksUri: values["jwks-uri"] });
  app.listen(port, "127.0.0.1", () => {
    console.log(`MCP server (Node) on http://127.0.0.1:${port}, resource ${resource}, tokens of ${values.sts}`);
  });
}
