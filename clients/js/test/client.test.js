// Unit tests of token-exchange-client against a fake /token and a fake API, both real HTTP
// servers on 127.0.0.1 (port 0). Run: node --test clients/js/test/
import assert from "node:assert/strict";
import http from "node:http";
import { after, before, beforeEach, test } from "node:test";

import {
  TokenExchangeError,
  TokenExchangeUnavailableError,
  createTokenExchangeClient,
} from "../token-exchange-client.js";

const HOUR = 3600;

/** A JWT-shaped subject token (unsigned: the client only reads `exp`). */
function subjectToken(sub, exp = Math.floor(Date.now() / 1000) + HOUR) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${part({ alg: "RS256" })}.${part({ sub, exp })}.c2ln`;
}

function listen(handler) {
  const server = http.createServer(handler);
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => {
      resolve({ server, url: `http://127.0.0.1:${server.address().port}` });
    });
  });
}

async function readForm(req) {
  let body = "";
  for await (const chunk of req) body += chunk;
  return new URLSearchParams(body);
}

async function until(condition) {
  while (!condition()) await new Promise((r) => setTimeout(r, 2));
}

function json(res, status, body, headers = {}) {
  res.writeHead(status, { "Content-Type": "application/json", ...headers });
  res.end(JSON.stringify(body));
}

// The fake token service: every request is recorded; `sts.answer` decides the reply (default:
// a token naming the subject, the target and a counter, so tests can tell tokens apart).
const sts = { requests: [], answer: null, delayMs: 0, serial: 0 };
// The fake API: records the Authorization header; `api.reject` decides a 401.
const api = { requests: [], reject: () => false };
let stsUrl;
let apiUrl;
const servers = [];

before(async () => {
  const token = await listen(async (req, res) => {
    const form = await readForm(req);
    const seen = { form, at: Date.now(), headers: req.headers };
    sts.requests.push(seen);
    const delay = sts.delayFor?.(sts.requests.length) ?? sts.delayMs;
    if (delay) await new Promise((r) => setTimeout(r, delay));
    const custom = sts.answer?.(form, sts.requests.length);
    if (custom) return json(res, custom.status, custom.body, custom.headers);
    sts.serial += 1;
    const sub = JSON.parse(Buffer.from(form.get("subject_token").split(".")[1], "base64url")).sub;
    const target = form.getAll("resource").join(",") || form.get("audience");
    json(res, 200, {
      access_token: `minted:${sub}:${target}:${form.get("scope") ?? ""}:${sts.serial}`,
      issued_token_type: "urn:ietf:params:oauth:token-type:access_token",
      token_type: "Bearer",
      expires_in: 300,
    });
  });
  const downstream = await listen((req, res) => {
    const auth = req.headers.authorization ?? "";
    api.requests.push({ url: req.url, auth, headers: req.headers });
    // An open redirect, as one API under this origin might have: to another path prefix.
    if (req.url.startsWith("/redirect")) {
      res.writeHead(302, { Location: "/other-api/data" });
      return res.end();
    }
    if (api.reject(auth, api.requests.length)) return json(res, 401, { error: "invalid_token" });
    json(res, 200, { path: req.url, auth });
  });
  servers.push(token.server, downstream.server);
  stsUrl = `${token.url}/token`;
  apiUrl = downstream.url;
});

after(() => {
  for (const server of servers) {
    server.closeAllConnections(); // a hung answer (the timeout tests) does not hold the run
    server.close();
  }
});

beforeEach(() => {
  sts.requests = [];
  sts.answer = null;
  sts.delayMs = 0;
  sts.delayFor = null;
  api.requests = [];
  api.reject = () => false;
});

function client(overrides = {}) {
  let subject = overrides.subject ?? subjectToken("auth0|alice");
  const c = createTokenExchangeClient({
    tokenEndpoint: stsUrl,
    clientId: "spa",
    getSubjectToken: async () => subject,
    ...overrides,
  });
  c.setSubject = (value) => {
    subject = value;
  };
  return c;
}

test("exchanges with RFC 8693 parameters and returns the minted token", async () => {
  const c = client();
  const token = await c.tokenFor({
    resource: "https://countries.example.test/countries/nl",
    scope: "countries:read",
  });
  assert.match(token, /^minted:auth0\|alice:https:\/\/countries.example.test\/countries\/nl:/);
  const [{ form, headers }] = sts.requests;
  assert.equal(form.get("grant_type"), "urn:ietf:params:oauth:grant-type:token-exchange");
  assert.equal(form.get("client_id"), "spa");
  assert.equal(form.get("subject_token_type"), "urn:ietf:params:oauth:token-type:access_token");
  assert.equal(form.get("scope"), "countries:read");
  assert.equal(headers["content-type"], "application/x-www-form-urlencoded");
});

test("cache key: sorted scopes and the same details share a token; other targets do not", async () => {
  const c = client();
  const details = [{ type: "payment", actions: ["read"], locations: ["https://a.test"] }];
  const a = await c.tokenFor({ audience: "https://a.test", scope: "b  a", authorizationDetails: details });
  const b = await c.tokenFor({
    audience: "https://a.test",
    scope: ["a", "b", "a"], // a list, unsorted, repeated: the same scopes
    authorizationDetails: [{ locations: ["https://a.test"], actions: ["read"], type: "payment" }],
  });
  assert.equal(a, b);
  assert.equal(sts.requests.length, 1);
  assert.equal(sts.requests[0].form.get("scope"), "a b");
  assert.deepEqual(JSON.parse(sts.requests[0].form.get("authorization_details")), details);

  await c.tokenFor({ audience: "https://a.test", scope: "a" }); // other scopes
  await c.tokenFor({ audience: "https://b.test", scope: "a b" }); // other audience
  await c.tokenFor({ resource: "https://a.test", scope: "a b" }); // resource, not audience
  await c.tokenFor({ audience: "https://a.test", scope: "a b", authorizationDetails: [{ type: "x" }] });
  assert.equal(sts.requests.length, 5);
});

test("cache key holds a hash of the subject token, never the token itself", async () => {
  const secret = subjectToken("auth0|alice");
  let keys = [];
  const locks = {
    request: async (name, _options, callback) => {
      keys.push(name);
      return callback();
    },
  };
  const c = client({ subject: secret, locks });
  await c.tokenFor({ audience: "https://a.test" });
  c.close();
  assert.equal(keys.length, 1);
  assert.ok(!keys[0].includes(secret), "the lock name (the cache key) must not hold the token");
  assert.ok(!keys[0].includes(secret.split(".")[1]));
  const { createHash } = await import("node:crypto");
  const hash = createHash("sha256").update(secret).digest("base64").replace(/=+$/, "");
  assert.ok(keys[0].includes(hash), keys[0]);
});

test("a burst of concurrent calls for one key makes one exchange", async () => {
  sts.delayMs = 50;
  const c = client();
  const tokens = await Promise.all(
    Array.from({ length: 20 }, () => c.tokenFor({ resource: "https://a.test/x", scope: "r" })),
  );
  assert.equal(new Set(tokens).size, 1);
  assert.equal(sts.requests.length, 1);
});

test("refreshes ahead of expiry, by a margin scaled to the TTL", async () => {
  let clock = 1_000_000;
  const c = client({ now: () => clock });
  const first = await c.tokenFor({ audience: "https://a.test" });
  clock += 239_000; // 300 s token: refreshed once 60 s (20 %) are left, not before
  assert.equal(await c.tokenFor({ audience: "https://a.test" }), first);
  assert.equal(sts.requests.length, 1);
  clock += 2_000;
  const second = await c.tokenFor({ audience: "https://a.test" });
  assert.notEqual(second, first);
  assert.equal(sts.requests.length, 2);

  // A 30 s token is refreshed 6 s ahead.
  sts.answer = () => ({ status: 200, body: { access_token: `short${clock}`, expires_in: 30 } });
  const short = await c.tokenFor({ audience: "https://b.test" });
  clock += 23_000;
  assert.equal(await c.tokenFor({ audience: "https://b.test" }), short);
  clock += 2_000;
  assert.notEqual(await c.tokenFor({ audience: "https://b.test" }), short);
});

test("never serves a token past its expires_in, even when /token is down", async () => {
  let clock = 1_000_000;
  const c = client({ now: () => clock, sleep: async () => {} });
  const first = await c.tokenFor({ audience: "https://a.test" });
  sts.answer = () => ({ status: 503, body: { error: "temporarily_unavailable" }, headers: { "Retry-After": "1" } });
  clock += 250_000; // inside the margin, still valid: a failed refresh falls back to it
  assert.equal(await c.tokenFor({ audience: "https://a.test" }), first);
  clock += 50_001; // past expires_in: never served
  await assert.rejects(c.tokenFor({ audience: "https://a.test" }), TokenExchangeUnavailableError);
});

test("a failed refresh that outlasts the token does not serve it", async () => {
  let clock = 1_000_000;
  const sleep = async (ms) => void (clock += ms);
  const c = client({ now: () => clock, sleep, maxRetryDelayMs: 60_000 });
  await c.tokenFor({ audience: "https://a.test" });
  sts.answer = () => ({ status: 503, body: { error: "temporarily_unavailable" }, headers: { "Retry-After": "30" } });
  clock += 250_000; // valid for 50 s more; the retries wait at least 60 s
  await assert.rejects(c.tokenFor({ audience: "https://a.test" }), TokenExchangeUnavailableError);
});

test("never keeps a token beyond the subject token's own expiry", async () => {
  let clock = Date.now();
  const exp = Math.floor(clock / 1000) + 100; // the subject expires in 100 s; tokens last 300 s
  const c = client({ now: () => clock, subject: subjectToken("auth0|alice", exp) });
  const first = await c.tokenFor({ audience: "https://a.test" });
  clock += 30_000;
  assert.equal(await c.tokenFor({ audience: "https://a.test" }), first);
  clock = exp * 1000 + 1;
  assert.notEqual(await c.tokenFor({ audience: "https://a.test" }), first);
  assert.equal(sts.requests.length, 2);
});

test("a new subject token never gets another user's cached token", async () => {
  const c = client();
  const alice = await c.tokenFor({ audience: "https://a.test" });
  c.setSubject(subjectToken("auth0|bob"));
  const bob = await c.tokenFor({ audience: "https://a.test" });
  assert.match(bob, /auth0\|bob/);
  assert.notEqual(bob, alice);
  // Auth0 renewed alice's token: a new subject token, so a new exchange too.
  c.setSubject(subjectToken("auth0|alice", Math.floor(Date.now() / 1000) + 2 * HOUR));
  assert.notEqual(await c.tokenFor({ audience: "https://a.test" }), alice);
  assert.equal(sts.requests.length, 3);
});

test("a user change during an exchange does not cache the old user's token", async () => {
  sts.delayMs = 50;
  const c = client();
  const pending = c.tokenFor({ audience: "https://a.test" });
  await until(() => sts.requests.length === 1); // the exchange is under way
  c.clear();
  c.setSubject(subjectToken("auth0|bob"));
  await pending;
  assert.match(await c.tokenFor({ audience: "https://a.test" }), /auth0\|bob/);
  assert.equal(sts.requests.length, 2);
});

test("an exchange started before clear() is not cached after it", async () => {
  sts.delayFor = (n) => (n === 1 ? 80 : 10); // the old exchange answers last
  const c = client();
  const old = c.tokenFor({ audience: "https://a.test" });
  await until(() => sts.requests.length === 1); // the exchange is under way
  c.clear();
  const renewed = await c.tokenFor({ audience: "https://a.test" });
  assert.notEqual(await old, renewed);
  assert.equal(await c.tokenFor({ audience: "https://a.test" }), renewed);
  assert.equal(sts.requests.length, 2);
});

test("clear() forgets every token", async () => {
  const c = client();
  const first = await c.tokenFor({ audience: "https://a.test" });
  c.clear();
  assert.notEqual(await c.tokenFor({ audience: "https://a.test" }), first);
});

test("fetch calls the API with the Bearer token for the URL as resource", async () => {
  const c = client();
  const response = await c.fetch(`${apiUrl}/countries/nl?x=1`, { headers: { "X-A": "1" } }, { scope: "r" });
  assert.equal(response.status, 200);
  const body = await response.json();
  assert.equal(sts.requests[0].form.get("resource"), `${apiUrl}/countries/nl`);
  assert.equal(api.requests[0].headers["x-a"], "1");
  assert.equal(api.requests[0].url, "/countries/nl?x=1");
  assert.equal(body.auth, `Bearer ${await c.tokenFor({ resource: `${apiUrl}/countries/nl`, scope: "r" })}`);
  assert.equal(sts.requests.length, 1);
});

test("fetch takes a Request too, keeping its headers", async () => {
  const c = client();
  const request = new Request(`${apiUrl}/countries/de`, { headers: { "X-A": "1" } });
  const response = await c.fetch(request, {}, { scope: "r" });
  assert.equal(response.status, 200);
  assert.equal(sts.requests[0].form.get("resource"), `${apiUrl}/countries/de`);
  assert.match((await response.json()).auth, /^Bearer minted:/);
  assert.equal(api.requests[0].headers["x-a"], "1");
});

test("a 401 from the API drops the token, exchanges again once and retries once", async () => {
  const c = client();
  const target = { audience: "https://a.test" };
  const first = await c.tokenFor(target);
  api.reject = (auth) => auth === `Bearer ${first}`;
  const response = await c.fetch(`${apiUrl}/x`, {}, target);
  assert.equal(response.status, 200);
  assert.equal(api.requests.length, 2);
  assert.equal(sts.requests.length, 2);
  assert.notEqual(await c.tokenFor(target), first);

  // Refused again: no third try; the 401 is the caller's to see.
  api.reject = () => true;
  const refused = await c.fetch(`${apiUrl}/x`, {}, target);
  assert.equal(refused.status, 401);
  assert.equal(api.requests.length, 4);
  assert.equal(sts.requests.length, 3);
});

test("concurrent 401s share one new exchange", async () => {
  const c = client();
  const target = { audience: "https://a.test" };
  const first = await c.tokenFor(target);
  api.reject = (auth) => auth === `Bearer ${first}`;
  sts.delayMs = 30;
  const responses = await Promise.all(Array.from({ length: 10 }, () => c.fetch(`${apiUrl}/x`, {}, target)));
  assert.deepEqual(new Set(responses.map((r) => r.status)), new Set([200]));
  assert.equal(sts.requests.length, 2);
});

test("503 with Retry-After is honoured, with jitter, then succeeds", async () => {
  sts.answer = (_form, n) =>
    n === 1 ? { status: 503, body: { error: "temporarily_unavailable" }, headers: { "Retry-After": "1" } } : null;
  const c = client();
  const token = await c.tokenFor({ audience: "https://a.test" });
  assert.match(token, /^minted:/);
  assert.equal(sts.requests.length, 2);
  const waited = sts.requests[1].at - sts.requests[0].at;
  assert.ok(waited >= 1000, `retried after ${waited} ms, before Retry-After`);
  assert.ok(waited < 1600, `waited ${waited} ms`);
});

test("429 and 503: bounded attempts, jittered delays, then a typed error", async () => {
  const delays = [];
  let n = 0;
  const randoms = [0, 0.5, 0.99];
  const c = client({ sleep: async (ms) => void delays.push(ms), random: () => randoms[n++ % 3] });
  sts.answer = () => ({
    status: 429,
    body: { error: "slow_down", error_description: "too many requests for this client" },
    headers: { "Retry-After": "2" },
  });
  const error = await c.tokenFor({ audience: "https://a.test" }).catch((e) => e);
  assert.ok(error instanceof TokenExchangeUnavailableError);
  assert.ok(error instanceof TokenExchangeError);
  assert.equal(error.error, "slow_down");
  assert.equal(error.error_description, "too many requests for this client");
  assert.equal(error.status, 429);
  assert.equal(error.retryAfter, 2);
  assert.equal(sts.requests.length, 3); // maxAttempts
  assert.equal(delays.length, 2);
  for (const d of delays) assert.ok(d >= 2000 && d < 2500, `delay ${d}`);
  assert.notEqual(delays[0], delays[1]); // jittered

  // A Retry-After longer than we may wait fails at once (and is not retried earlier).
  sts.requests = [];
  sts.answer = () => ({ status: 503, body: { error: "temporarily_unavailable" }, headers: { "Retry-After": "120" } });
  const soon = await c.tokenFor({ audience: "https://b.test" }).catch((e) => e);
  assert.ok(soon instanceof TokenExchangeUnavailableError);
  assert.equal(soon.retryAfter, 120);
  assert.equal(sts.requests.length, 1);
});

test("an unreachable /token is a typed, retried error", async () => {
  const c = client({ tokenEndpoint: "http://127.0.0.1:9/token", sleep: async () => {}, maxAttempts: 2 });
  const error = await c.tokenFor({ audience: "https://a.test" }).catch((e) => e);
  assert.ok(error instanceof TokenExchangeUnavailableError);
  assert.equal(error.error, "temporarily_unavailable");
  assert.equal(error.status, 0);
});

for (const code of ["invalid_target", "invalid_scope"]) {
  test(`${code}: no retry, and a short negative cache`, async () => {
    let clock = 1_000_000;
    const c = client({ now: () => clock, sleep: async () => assert.fail("no retry") });
    sts.answer = () => ({ status: 400, body: { error: code, error_description: "refused" } });
    const target = { resource: "https://a.test/fr", scope: "r" };
    const error = await c.tokenFor(target).catch((e) => e);
    assert.ok(error instanceof TokenExchangeError);
    assert.ok(!(error instanceof TokenExchangeUnavailableError));
    assert.equal(error.error, code);
    assert.equal(error.error_description, "refused");
    assert.equal(error.status, 400);
    await assert.rejects(c.tokenFor(target), (e) => e.error === code);
    assert.equal(sts.requests.length, 1); // remembered
    clock += 10_001;
    sts.answer = null;
    assert.match(await c.tokenFor(target), /^minted:/);
    assert.equal(sts.requests.length, 2);
  });
}

test("other errors carry error and error_description, and are neither retried nor cached", async () => {
  const c = client({ sleep: async () => assert.fail("no retry") });
  sts.answer = () => ({ status: 400, body: { error: "invalid_grant", error_description: "subject_token expired" } });
  const error = await c.tokenFor({ audience: "https://a.test" }).catch((e) => e);
  assert.equal(error.error, "invalid_grant");
  assert.equal(error.error_description, "subject_token expired");
  assert.equal(error.message, "invalid_grant: subject_token expired");
  await c.tokenFor({ audience: "https://a.test" }).catch(() => {});
  assert.equal(sts.requests.length, 2);
});

test("Web Locks: taken per key, and the cache is checked again once the lock is held", async () => {
  // Two tabs: a lock manager they share (as navigator.locks is) and the channel between them.
  const queues = new Map();
  const names = [];
  const locks = {
    async request(name, _options, callback) {
      names.push(name);
      const previous = queues.get(name) ?? Promise.resolve();
      let release;
      const mine = new Promise((r) => (release = r));
      queues.set(name, previous.then(() => mine));
      await previous;
      // Let the holder's message to other tabs arrive first, as it would between tabs.
      await new Promise((r) => setTimeout(r, 20));
      try {
        return await callback();
      } finally {
        release();
      }
    },
  };
  const subject = subjectToken("auth0|alice");
  const tab1 = client({ locks, subject });
  const tab2 = client({ locks, subject });
  try {
    sts.delayMs = 30;
    const [a, b] = await Promise.all([
      tab1.tokenFor({ audience: "https://a.test" }),
      tab2.tokenFor({ audience: "https://a.test" }),
    ]);
    assert.equal(a, b);
    assert.equal(sts.requests.length, 1);
    assert.equal(names.length, 2);
    assert.equal(names[0], names[1]);

    // Another user's tab never takes alice's token from the channel.
    const bobTab = client({ locks, subject: subjectToken("auth0|bob") });
    try {
      assert.match(await bobTab.tokenFor({ audience: "https://a.test" }), /auth0\|bob/);
    } finally {
      bobTab.close();
    }
  } finally {
    tab1.close();
    tab2.close();
  }
});

test("works without Web Locks, as in Node (locks: true and no navigator.locks)", async () => {
  assert.equal(globalThis.navigator?.locks, undefined);
  const c = client({ locks: true });
  assert.match(await c.tokenFor({ audience: "https://a.test" }), /^minted:/);
  c.close();
});

test("needs a resource or an audience, and the three options", async () => {
  assert.throws(() => createTokenExchangeClient({ tokenEndpoint: stsUrl, clientId: "spa" }), TypeError);
  await assert.rejects(client().tokenFor({ scope: "r" }), TypeError);
});

// Security review of issue 14 (4-8).

test("cache key: authorization details are keyed by the JSON sent, toJSON included", async () => {
  const c = client();
  const a = await c.tokenFor({
    audience: "https://a.test",
    authorizationDetails: [{ type: "t", locations: [new URL("https://a.example/")] }],
  });
  const b = await c.tokenFor({
    audience: "https://a.test",
    authorizationDetails: [{ type: "t", locations: [new URL("https://b.example/")] }],
  });
  assert.notEqual(a, b);
  assert.equal(sts.requests.length, 2);
  const sent = sts.requests.map((r) => JSON.parse(r.form.get("authorization_details")));
  assert.deepEqual(sent[0], [{ type: "t", locations: ["https://a.example/"] }]);
  assert.deepEqual(sent[1], [{ type: "t", locations: ["https://b.example/"] }]);

  // Dates too.
  const day = (d) => [{ type: "t", until: new Date(d) }];
  await c.tokenFor({ audience: "https://a.test", authorizationDetails: day("2030-01-01") });
  await c.tokenFor({ audience: "https://a.test", authorizationDetails: day("2031-01-01") });
  assert.equal(sts.requests.length, 4);

  // undefined is dropped from what is sent, so the key drops it too: the same question...
  await c.tokenFor({ audience: "https://a.test", authorizationDetails: [{ type: "u", x: undefined }] });
  await c.tokenFor({ audience: "https://a.test", authorizationDetails: [{ type: "u" }] });
  assert.equal(sts.requests.length, 5);
  // ... while null is sent as null: another question.
  await c.tokenFor({ audience: "https://a.test", authorizationDetails: [{ type: "u", x: null }] });
  assert.equal(sts.requests.length, 6);
  assert.deepEqual(JSON.parse(sts.requests[5].form.get("authorization_details")), [{ type: "u", x: null }]);
});

test("retry options: nonsense is a TypeError at creation", () => {
  const make = (extra) => () => createTokenExchangeClient({
    tokenEndpoint: stsUrl, clientId: "spa", getSubjectToken: () => "t", ...extra,
  });
  for (const bad of [NaN, Infinity, -1, 0, 1.5, "3", null]) {
    if (bad === null) continue; // absent: the default
    assert.throws(make({ maxAttempts: bad }), TypeError, `maxAttempts: ${bad}`);
  }
  for (const name of ["maxRetryDelayMs", "negativeTtlMs", "timeoutMs"]) {
    for (const bad of [NaN, Infinity, -1, "10"]) {
      assert.throws(make({ [name]: bad }), TypeError, `${name}: ${bad}`);
    }
  }
  assert.throws(make({ timeoutMs: 0 }), TypeError);
  make({ maxAttempts: 1, maxRetryDelayMs: 0, negativeTtlMs: 0, timeoutMs: 1 })();
});

test("retry options: maxAttempts is capped at 10", { timeout: 10_000 }, async () => {
  sts.answer = () => ({ status: 503, body: { error: "temporarily_unavailable" } });
  const c = client({ maxAttempts: 1_000_000, sleep: async () => {} });
  await assert.rejects(c.tokenFor({ audience: "https://a.test" }), TokenExchangeUnavailableError);
  assert.equal(sts.requests.length, 10);
});

test("a /token that does not answer times out: unavailable, retried within bounds", { timeout: 10_000 }, async () => {
  sts.delayMs = 3_000; // hung, as far as the client is concerned
  const c = client({ timeoutMs: 100, maxAttempts: 2, sleep: async () => {} });
  const started = Date.now();
  const error = await c.tokenFor({ audience: "https://a.test" }).catch((e) => e);
  assert.ok(error instanceof TokenExchangeUnavailableError, String(error));
  assert.equal(error.error, "temporarily_unavailable");
  assert.match(error.error_description, /did not answer within 100 ms/);
  assert.equal(error.status, 0);
  assert.equal(sts.requests.length, 2);
  assert.ok(Date.now() - started < 2_000, `took ${Date.now() - started} ms`);
});

test("a Web Lock held by a tab that never finishes is waited for only so long", { timeout: 10_000 }, async () => {
  // The other tab holds the lock for ever; a lock manager that honours `signal`, as
  // navigator.locks does.
  const locks = {
    request(_name, options, _callback) {
      return new Promise((_resolve, reject) => {
        options?.signal?.addEventListener("abort", () => reject(options.signal.reason));
      });
    },
  };
  const c = client({ locks, timeoutMs: 50, maxAttempts: 1 });
  try {
    const started = Date.now();
    const error = await c.tokenFor({ audience: "https://a.test" }).catch((e) => e);
    assert.ok(error instanceof TokenExchangeUnavailableError, String(error));
    assert.match(error.error_description, /another tab/);
    assert.ok(Date.now() - started < 5_000);
    assert.equal(sts.requests.length, 0);
  } finally {
    c.close();
  }
});

test("a 401 after a change of user is not resent with the new user's token", async () => {
  const c = client();
  const bob = subjectToken("auth0|bob");
  // The API answers alice's call with a 401 just as the page switches to bob.
  api.reject = (_auth, n) => {
    if (n === 1) c.setSubject(bob);
    return n === 1;
  };
  const response = await c.fetch(`${apiUrl}/x`, {}, { audience: "https://a.test" });
  assert.equal(response.status, 401);
  assert.equal(api.requests.length, 1);
  assert.equal(sts.requests.length, 1);
  assert.match(await c.tokenFor({ audience: "https://a.test" }), /auth0\|bob/); // bob's own
});

test("a 401 after clear() is not resent", async () => {
  const c = client();
  api.reject = (_auth, n) => {
    if (n === 1) c.clear(); // signed out (and in again, as the same user)
    return n === 1;
  };
  const response = await c.fetch(`${apiUrl}/x`, {}, { audience: "https://a.test" });
  assert.equal(response.status, 401);
  assert.equal(api.requests.length, 1);
  assert.equal(sts.requests.length, 1);
});

test("a 401 while the same user's retry is exchanged, then clear(): not resent", async () => {
  const c = client();
  const target = { audience: "https://a.test" };
  const first = await c.tokenFor(target);
  api.reject = (auth) => auth === `Bearer ${first}`;
  sts.delayMs = 50;
  const pending = c.fetch(`${apiUrl}/x`, {}, target);
  await until(() => sts.requests.length === 2); // the retry's exchange is under way
  c.clear();
  assert.equal((await pending).status, 401);
  assert.equal(api.requests.length, 1);
});

test("a relative URL is resolved once, against document.baseURI, and called there", async () => {
  const saved = { document: globalThis.document, location: globalThis.location };
  globalThis.document = { baseURI: `${apiUrl}/base/` };
  globalThis.location = { href: `${apiUrl}/page/index.html` };
  try {
    const c = client();
    const response = await c.fetch("countries/nl?x=1", {}, { scope: "r" });
    assert.equal(response.status, 200);
    assert.equal(sts.requests[0].form.get("resource"), `${apiUrl}/base/countries/nl`);
    assert.equal(api.requests[0].url, "/base/countries/nl?x=1");
  } finally {
    globalThis.document = saved.document;
    globalThis.location = saved.location;
  }
});

test("without a document (Node), a relative URL is a TypeError, before any exchange", async () => {
  assert.equal(globalThis.document, undefined);
  await assert.rejects(client().fetch("/countries/nl"), TypeError);
  assert.equal(sts.requests.length, 0);
  assert.equal(api.requests.length, 0);
});

test("the token does not follow a redirect, unless init.redirect says so", async () => {
  const c = client();
  await assert.rejects(c.fetch(`${apiUrl}/redirect`, {}, { audience: "https://a.test" }), TypeError);
  assert.deepEqual(api.requests.map((r) => r.url), ["/redirect"]);

  const manual = await c.fetch(`${apiUrl}/redirect`, { redirect: "manual" }, { audience: "https://a.test" });
  assert.equal(manual.status, 302);
  assert.deepEqual(api.requests.map((r) => r.url), ["/redirect", "/redirect"]);

  const followed = await c.fetch(`${apiUrl}/redirect`, { redirect: "follow" }, { audience: "https://a.test" });
  assert.equal(followed.status, 200);
  assert.equal(api.requests[3].url, "/other-api/data");
  assert.match(api.requests[3].auth, /^Bearer minted:/); // the caller asked for it
});
