// DPoP (RFC 9449) in token-exchange-client, against a fake /token and a fake API that are real
// HTTP servers on 127.0.0.1 and check every proof they get as RFC 9449 §4.3 says: the
// signature (with Web Crypto, against the header's jwk), typ, alg, htm, htu, iat, a jti never
// seen before, ath, the nonce when they ask for one, and that the key is the token's (cnf.jkt).
// Run: node --test clients/js/test/
import assert from "node:assert/strict";
import http from "node:http";
import { after, before, beforeEach, test } from "node:test";

import { TokenExchangeError, createTokenExchangeClient } from "../token-exchange-client.js";

const subtle = globalThis.crypto.subtle;

function subjectToken(sub) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${part({ alg: "RS256" })}.${part({ sub, exp: Math.floor(Date.now() / 1000) + 3600 })}.c2ln`;
}

const b64 = (bytes) => Buffer.from(bytes).toString("base64url");
const sha256 = async (text) => b64(await subtle.digest("SHA-256", new TextEncoder().encode(text)));

/** RFC 7638 thumbprint of an EC public JWK. */
const thumbprint = ({ crv, kty, x, y }) => sha256(JSON.stringify({ crv, kty, x, y }));

/**
 * Checks `proof` as a resource or authorization server must (RFC 9449 §4.3) for a `method`
 * request to `url`; throws an AssertionError naming what is wrong. Returns the header, the
 * claims and the key's thumbprint.
 */
async function verifyProof(proof, { method, url, accessToken, nonce }) {
  assert.equal(typeof proof, "string", "one DPoP header");
  const parts = proof.split(".");
  assert.equal(parts.length, 3, "a compact JWS");
  const header = JSON.parse(Buffer.from(parts[0], "base64url").toString());
  const claims = JSON.parse(Buffer.from(parts[1], "base64url").toString());
  assert.equal(header.typ, "dpop+jwt");
  assert.equal(header.alg, "ES256");
  assert.deepEqual(Object.keys(header.jwk).sort(), ["crv", "kty", "x", "y"], "a public key only");
  assert.equal(header.jwk.kty, "EC");
  assert.equal(header.jwk.crv, "P-256");
  const key = await subtle.importKey("jwk", header.jwk, { name: "ECDSA", namedCurve: "P-256" }, true, [
    "verify",
  ]);
  const signature = Buffer.from(parts[2], "base64url");
  assert.equal(signature.length, 64, "ES256: r || s");
  const valid = await subtle.verify(
    { name: "ECDSA", hash: "SHA-256" },
    key,
    signature,
    new TextEncoder().encode(`${parts[0]}.${parts[1]}`),
  );
  assert.ok(valid, "the signature verifies with the header's jwk");
  assert.equal(claims.htm, method);
  const target = new URL(url);
  assert.equal(claims.htu, `${target.origin}${target.pathname}`, "htu without query or fragment");
  assert.ok(Math.abs(claims.iat - Date.now() / 1000) <= 5, "iat is now");
  assert.ok(typeof claims.jti === "string" && claims.jti.length >= 16, "a random jti");
  assert.ok(!seenJtis.has(claims.jti), "a jti used once");
  seenJtis.add(claims.jti);
  if (accessToken === undefined) assert.equal(claims.ath, undefined);
  else assert.equal(claims.ath, await sha256(accessToken), "ath = the access token's hash");
  assert.equal(claims.nonce, nonce);
  return { header, claims, jkt: await thumbprint(header.jwk) };
}

const seenJtis = new Set();

async function until(condition) {
  while (!condition()) await new Promise((r) => setTimeout(r, 2));
}

function listen(handler) {
  const server = http.createServer(handler);
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => {
      resolve({ server, url: `http://127.0.0.1:${server.address().port}` });
    });
  });
}

function json(res, status, body, headers = {}) {
  res.writeHead(status, { "Content-Type": "application/json", ...headers });
  res.end(JSON.stringify(body));
}

// The fake token service: checks the proof, binds the token to its key (the token names its
// jkt, standing for cnf.jkt). `sts.nonce`: proofs must carry it, else 400 use_dpop_nonce;
// `sts.nextNonce()` (if set): every proof is refused so, with a new nonce each time; `sts.tokenType` what to
// answer ("DPoP" by default).
const sts = {};
// The fake API: checks `Authorization: DPoP <token>` and its proof. `api.nonce` as above, with
// 401 and WWW-Authenticate (RFC 9449 §9); `api.reject(n)` a 401 invalid_token for call n.
const api = {};
let stsUrl;
let apiUrl;
const servers = [];

function reset() {
  Object.assign(sts, { requests: [], errors: [], nonce: undefined, nextNonce: undefined, tokenType: "DPoP", serial: 0 });
  Object.assign(api, { requests: [], errors: [], nonce: undefined, nextNonce: undefined, reject: () => false });
}

before(async () => {
  reset();
  const token = await listen(async (req, res) => {
    let body = "";
    for await (const chunk of req) body += chunk;
    const form = new URLSearchParams(body);
    const seen = { form, proof: req.headers.dpop, jkt: undefined };
    sts.requests.push(seen);
    if (seen.proof === undefined) {
      const sub = JSON.parse(Buffer.from(form.get("subject_token").split(".")[1], "base64url")).sub;
      return json(res, 200, { access_token: `bearer;${sub};${++sts.serial}`, token_type: "Bearer", expires_in: 300 });
    }
    let checked;
    try {
      const claims = JSON.parse(Buffer.from(seen.proof.split(".")[1], "base64url").toString());
      if (sts.nextNonce || (sts.nonce !== undefined && claims.nonce !== sts.nonce)) {
        const nonce = sts.nextNonce?.() ?? sts.nonce;
        sts.nonce = nonce;
        seen.status = 400;
        return json(res, 400, { error: "use_dpop_nonce", error_description: "nonce" }, { "DPoP-Nonce": nonce });
      }
      checked = await verifyProof(seen.proof, { method: "POST", url: stsUrl, nonce: sts.nonce });
    } catch (error) {
      sts.errors.push(error);
      return json(res, 400, { error: "invalid_dpop_proof", error_description: error.message });
    }
    seen.jkt = checked.jkt;
    seen.status = 200;
    const sub = JSON.parse(Buffer.from(form.get("subject_token").split(".")[1], "base64url")).sub;
    const minted = `dpop;${checked.jkt};${sub};${form.get("resource") ?? form.get("audience")};${++sts.serial}`;
    const headers = sts.nonce ? { "DPoP-Nonce": sts.nonce } : {};
    json(res, 200, { access_token: minted, token_type: sts.tokenType, expires_in: 300 }, headers);
  });
  const downstream = await listen(async (req, res) => {
    const auth = req.headers.authorization ?? "";
    const seen = { method: req.method, url: req.url, auth, proof: req.headers.dpop };
    api.requests.push(seen);
    const [scheme, accessToken] = auth.split(" ");
    if (scheme === "Bearer") {
      if (seen.proof !== undefined) api.errors.push(new Error("a proof with a bearer token"));
      return json(res, 200, { auth });
    }
    try {
      assert.equal(scheme, "DPoP");
      const claims = JSON.parse(Buffer.from(seen.proof.split(".")[1], "base64url").toString());
      if (api.nextNonce || (api.nonce !== undefined && claims.nonce !== api.nonce)) {
        api.nonce = api.nextNonce?.() ?? api.nonce;
        return json(res, 401, { error: "use_dpop_nonce" }, {
          "WWW-Authenticate": 'DPoP error="use_dpop_nonce", error_description="Resource server requires nonce in DPoP proof", algs="ES256"',
          "DPoP-Nonce": api.nonce,
        });
      }
      const checked = await verifyProof(seen.proof, {
        method: req.method,
        url: `${apiUrl}${req.url}`,
        accessToken,
        nonce: api.nonce,
      });
      // cnf.jkt: the proof is signed by the key the token is bound to.
      assert.equal(checked.jkt, accessToken.split(";")[1], "the token's key signed the proof");
      seen.jkt = checked.jkt;
    } catch (error) {
      api.errors.push(error);
      return json(res, 401, { error: "invalid_dpop_proof" }, { "WWW-Authenticate": 'DPoP error="invalid_dpop_proof"' });
    }
    if (api.reject(api.requests.length)) {
      return json(res, 401, { error: "invalid_token" }, { "WWW-Authenticate": 'DPoP error="invalid_token"' });
    }
    json(res, 200, { path: req.url, auth });
  });
  servers.push(token.server, downstream.server);
  stsUrl = `${token.url}/token`;
  apiUrl = downstream.url;
});

after(() => {
  for (const server of servers) {
    server.closeAllConnections();
    server.close();
  }
});

beforeEach(reset);

function client(overrides = {}) {
  // One sign-in token per client, as a SPA holds one: made again on each call, it would be
  // another token whenever a second boundary fell between two calls (its exp), and the client
  // rightly does not retry a 401 once the sign-in token has changed.
  const signedIn = subjectToken("auth0|alice");
  return createTokenExchangeClient({
    tokenEndpoint: stsUrl,
    clientId: "spa",
    getSubjectToken: async () => signedIn,
    dpop: true,
    ...overrides,
  });
}

/** No proof the fake servers got was invalid. */
function assertNoBadProofs() {
  assert.deepEqual([...sts.errors, ...api.errors].map(String), []);
}

test("dpop: /token gets a valid proof and the token is bound to the client's key", async () => {
  const c = client();
  const token = await c.tokenFor({ resource: `${apiUrl}/countries/nl`, scope: "countries:read" });
  assertNoBadProofs();
  assert.equal(sts.requests.length, 1);
  const [request] = sts.requests;
  assert.equal(request.status, 200);
  const jkt = await c.dpopThumbprint();
  assert.equal(request.jkt, jkt);
  assert.equal(token.split(";")[1], jkt);
  // The proof's htu is the endpoint without query or fragment.
  const q = client({ tokenEndpoint: `${stsUrl}?tenant=a#x` });
  await q.tokenFor({ audience: "https://api.example" });
  assertNoBadProofs();
  assert.equal(sts.requests[1].status, 200);
});

test("dpop: API calls carry the DPoP scheme and a fresh valid proof with htm, htu and ath", async () => {
  const c = client();
  const url = `${apiUrl}/countries/nl?fields=capital#top`;
  const first = await c.fetch(url, {}, { scope: "countries:read" });
  assert.equal(first.status, 200);
  const second = await c.fetch(url, { method: "post", body: "x" }, { scope: "countries:read" });
  assert.equal(second.status, 200);
  const third = await c.fetch(`${apiUrl}/countries/nl`, { method: "PATCH", body: "x" }, { scope: "countries:read" });
  assert.equal(third.status, 200);
  assertNoBadProofs();
  assert.equal(sts.requests.length, 1, "one exchange: the bound token is cached");
  assert.deepEqual(api.requests.map((r) => r.method), ["GET", "POST", "PATCH"]);
  const jkt = await c.dpopThumbprint();
  for (const r of api.requests) {
    assert.match(r.auth, /^DPoP dpop;/);
    assert.equal(r.jkt, jkt);
  }
  // A proof per call: three different jtis (verifyProof refuses a jti seen before).
  assert.equal(new Set(api.requests.map((r) => r.proof)).size, 3);
});

test("dpop: the private key is non-extractable, generated as ES256", async () => {
  const generated = [];
  const generateKey = subtle.generateKey;
  subtle.generateKey = async (...args) => {
    const pair = await generateKey.apply(subtle, args);
    generated.push({ args, pair });
    return pair;
  };
  try {
    const c = client();
    await c.tokenFor({ audience: "https://api.example" });
  } finally {
    subtle.generateKey = generateKey;
  }
  assert.equal(generated.length, 1);
  const [{ args, pair }] = generated;
  assert.deepEqual(args[0], { name: "ECDSA", namedCurve: "P-256" });
  assert.equal(args[1], false);
  assert.equal(pair.privateKey.extractable, false);
  await assert.rejects(subtle.exportKey("jwk", pair.privateKey));
  await assert.rejects(subtle.exportKey("pkcs8", pair.privateKey));
  // The proof's jwk is that pair's public key.
  const publicJwk = await subtle.exportKey("jwk", pair.publicKey);
  assert.equal(sts.requests[0].jkt, await thumbprint(publicJwk));
});

test("dpop: clear() drops the key: the next token is bound to a new one, never the old token", async () => {
  const c = client();
  const target = { resource: `${apiUrl}/countries/nl` };
  const before = await c.tokenFor(target);
  const oldJkt = await c.dpopThumbprint();
  c.clear();
  const newJkt = await c.dpopThumbprint();
  assert.notEqual(newJkt, oldJkt);
  const afterClear = await c.tokenFor(target);
  assert.notEqual(afterClear, before);
  assert.equal(sts.requests.length, 2, "exchanged again, with the new key");
  assert.equal(sts.requests[1].jkt, newJkt);
  const response = await c.fetch(`${apiUrl}/countries/nl`);
  assert.equal(response.status, 200);
  assert.equal(api.requests[0].jkt, newJkt);
  assert.equal(api.requests[0].auth, `DPoP ${afterClear}`);
  assertNoBadProofs();
});

test("dpop: clear() while the key is being made: the token is bound to the next key", async () => {
  const made = [];
  let release;
  const slow = new Promise((resolve) => {
    release = resolve;
  });
  const c = client({
    dpop: {
      keyPair: async () => {
        const pair = await subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, false, ["sign", "verify"]);
        made.push(pair);
        if (made.length === 1) await slow; // the first key is still being made at clear()
        return pair;
      },
    },
  });
  const pending = c.tokenFor({ audience: "https://api.example" });
  await until(() => made.length === 1);
  c.clear();
  release();
  const token = await pending;
  const jkt = await c.dpopThumbprint();
  assert.equal(made.length, 2);
  assert.equal(jkt, await thumbprint(await subtle.exportKey("jwk", made[1].publicKey)));
  assert.deepEqual(sts.requests.map((r) => r.jkt), [jkt], "never a proof by the old key");
  assert.equal(token.split(";")[1], jkt);
});

test("dpop: /token's use_dpop_nonce is retried once with the nonce, which is then remembered", async () => {
  sts.nonce = "n-1";
  const c = client();
  const token = await c.tokenFor({ audience: "https://api.example" });
  assert.match(token, /^dpop;/);
  assert.deepEqual(sts.requests.map((r) => r.status), [400, 200]);
  assertNoBadProofs(); // the second proof carried nonce n-1 (verifyProof checks it)
  // The next exchange sends the nonce at once.
  await c.tokenFor({ audience: "https://other.example" });
  assert.deepEqual(sts.requests.map((r) => r.status), [400, 200, 200]);
  // A nonce from an answer's DPoP-Nonce header replaces the one held.
  sts.nonce = "n-2";
  await c.tokenFor({ audience: "https://third.example" });
  assert.deepEqual(sts.requests.map((r) => r.status), [400, 200, 200, 400, 200]);
  assertNoBadProofs();
});

test("dpop: a /token that keeps asking for a new nonce gets one retry, then the error", async () => {
  let n = 0;
  sts.nonce = "never";
  sts.nextNonce = () => `fresh-${++n}`;
  const c = client({ maxAttempts: 3 });
  await assert.rejects(c.tokenFor({ audience: "https://api.example" }), (error) => {
    assert.ok(error instanceof TokenExchangeError);
    assert.equal(error.error, "use_dpop_nonce");
    assert.equal(error.status, 400);
    return true;
  });
  assert.equal(sts.requests.length, 2);
});

test("dpop: the API's 401 use_dpop_nonce is retried once with its nonce, no new exchange", async () => {
  api.nonce = "api-1";
  const c = client();
  const response = await c.fetch(`${apiUrl}/countries/nl`);
  assert.equal(response.status, 200);
  assert.equal(api.requests.length, 2);
  assert.equal(sts.requests.length, 1, "the token was fine: not exchanged again");
  assertNoBadProofs(); // the retry's proof carried api-1
  // Remembered per origin: the next call sends it at once.
  assert.equal((await c.fetch(`${apiUrl}/countries/de`)).status, 200);
  assert.equal(api.requests.length, 3);
  assertNoBadProofs();
});

test("dpop: nonce retries and the 401 token retry are both bounded", async () => {
  let n = 0;
  api.nonce = "never";
  api.nextNonce = () => `api-${++n}`;
  const c = client();
  const response = await c.fetch(`${apiUrl}/countries/nl`);
  assert.equal(response.status, 401);
  assert.match(response.headers.get("WWW-Authenticate"), /use_dpop_nonce/);
  // One nonce retry, then one new exchange and its call with its nonce retry: four calls.
  assert.equal(api.requests.length, 4);
  assert.equal(sts.requests.length, 2);
  assertNoBadProofs();
});

test("dpop: a 401 invalid_token is retried once with a new exchange, bound to the same key", async () => {
  api.reject = (n) => n === 1;
  const c = client();
  const response = await c.fetch(`${apiUrl}/countries/nl`);
  assert.equal(response.status, 200);
  assert.equal(sts.requests.length, 2);
  assert.equal(api.requests.length, 2);
  assert.notEqual(api.requests[0].auth, api.requests[1].auth);
  assert.equal(api.requests[1].jkt, await c.dpopThumbprint());
  assertNoBadProofs();
});

test("dpop: a service that answers Bearer gets its token used as a bearer token", async () => {
  sts.tokenType = "Bearer";
  const c = client();
  const response = await c.fetch(`${apiUrl}/countries/nl`, { headers: { DPoP: "stale" } });
  assert.equal(sts.requests.length, 1);
  assert.ok(sts.requests[0].proof, "a proof was offered");
  assert.equal(response.status, 200);
  assert.match(api.requests[0].auth, /^Bearer dpop;/);
  assert.equal(api.requests[0].proof, undefined, "no proof with a bearer token");
});

test("dpop: without the option there is no proof and no DPoP scheme", async () => {
  const c = client({ dpop: undefined });
  assert.equal(await c.dpopThumbprint(), undefined);
  const response = await c.fetch(`${apiUrl}/countries/nl`);
  assert.equal(response.status, 200);
  assert.equal(sts.requests[0].proof, undefined);
  assert.match(api.requests[0].auth, /^Bearer bearer;/);
});

test("dpop: a key pair of one's own, or a function making one for every new key", async () => {
  const mine = await subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, false, ["sign", "verify"]);
  const c = client({ dpop: { keyPair: mine } });
  await c.tokenFor({ audience: "https://api.example" });
  const jkt = await thumbprint(await subtle.exportKey("jwk", mine.publicKey));
  assert.equal(await c.dpopThumbprint(), jkt);
  assert.equal(sts.requests[0].jkt, jkt);
  c.clear();
  assert.notEqual(await c.dpopThumbprint(), jkt, "after clear(), a new key");

  let made = 0;
  const f = client({
    dpop: {
      keyPair: () => {
        made += 1;
        return subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, false, ["sign", "verify"]);
      },
    },
  });
  await f.tokenFor({ audience: "https://api.example" });
  f.clear();
  await f.tokenFor({ audience: "https://api.example" });
  assert.equal(made, 2);
  assert.notEqual(sts.requests[1].jkt, sts.requests[2].jkt);
  assertNoBadProofs();
});

test("dpop: a wrong key or option is a TypeError", async () => {
  assert.throws(() => client({ dpop: "yes" }), TypeError);
  const rsa = await subtle.generateKey(
    { name: "RSASSA-PKCS1-v1_5", modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: "SHA-256" },
    false,
    ["sign", "verify"],
  );
  const c = client({ dpop: { keyPair: rsa } });
  await assert.rejects(c.tokenFor({ audience: "https://api.example" }), TypeError);
  assert.equal(sts.requests.length, 0);
});
