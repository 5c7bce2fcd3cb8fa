// token-exchange-client: OAuth 2.0 Token Exchange (RFC 8693) per downstream call, for SPAs.
//
// Exchanges the app's sign-in token (Auth0's getTokenSilently) for a short-lived token scoped to
// exactly what one call touches, caches it in memory, shares one exchange among concurrent
// callers, and handles the failures a token service answers with (RFC 6749 §5.2 errors, 503/429
// with Retry-After). With `dpop`, every minted token is bound (RFC 9449) to a non-extractable
// Web Crypto key that lives in this client's memory, and every call proves possession of it.
// No dependencies: standard fetch and Web Crypto only, so it runs in browsers and in Node >= 20
// (where there are no Web Locks and no window).

/**
 * @typedef {object} ClientOptions
 * @property {string} tokenEndpoint The token service's `/token` URL.
 * @property {string} clientId This app's (public) client id at the token service.
 * @property {() => Promise<string | {access_token: string}> | string} getSubjectToken
 *   Returns the current sign-in token: Auth0's `() => auth0.getTokenSilently()`.
 * @property {boolean | LockManagerLike} [locks] `true`: coordinate tabs with `navigator.locks`
 *   (ignored where there are none, as in Node); or a LockManager. Default: off.
 * @property {number} [maxAttempts] Tries of `/token` per exchange when it is unavailable: an
 *   integer >= 1 (3); more than 10 counts as 10.
 * @property {number} [maxRetryDelayMs] Longest wait between tries, finite and >= 0 (10000); a
 *   longer `Retry-After` fails at once.
 * @property {number} [timeoutMs] How long one try of `/token` may take, finite and > 0 (10000);
 *   a try that takes longer counts as unavailable (and is retried within `maxAttempts`).
 * @property {number} [negativeTtlMs] How long an `invalid_target`/`invalid_scope` refusal is
 *   remembered, finite and >= 0 (10000).
 * @property {boolean | DpopOptions} [dpop] `true`: DPoP (RFC 9449) with an ES256 key pair the
 *   client generates, non-extractable, in memory; `clear()` drops it and the next token gets a
 *   new one. Or `{keyPair}`: your own ECDSA P-256 pair (or a function returning one, called for
 *   each new key). Default: off (bearer tokens).
 * @property {typeof globalThis.fetch} [fetch] The fetch to use (default: the global one).
 * @property {() => number} [now] Clock in ms (default `Date.now`); for tests.
 * @property {() => number} [random] Jitter source in [0, 1) (default `Math.random`); for tests.
 * @property {(ms: number) => Promise<void>} [sleep] How to wait (default `setTimeout`); for tests.
 *
 * @typedef {object} DpopOptions
 * @property {CryptoKeyPair | (() => CryptoKeyPair | Promise<CryptoKeyPair>)} [keyPair] The
 *   ECDSA P-256 key pair to sign proofs with; a function is called for every new key (the first
 *   one, and after each `clear()`). A pair (not a function) is used until the first `clear()`,
 *   then a generated one. Default: generated, non-extractable.
 *
 * @typedef {{request(name: string, options: {signal?: AbortSignal},
 *   callback: () => Promise<any>): Promise<any>}} LockManagerLike
 *
 * @typedef {object} TokenRequest
 * @property {string | string[]} [resource] RFC 8693 `resource`: the URL(s) the call touches.
 * @property {string} [audience] RFC 8693 `audience`: the API, by its identifier.
 * @property {string | string[]} [scope] Space-separated, or a list.
 * @property {object[]} [authorizationDetails] RFC 9396 authorization details.
 *
 * @typedef {object} TokenExchangeClient
 * @property {(request: TokenRequest) => Promise<string>} tokenFor A minted access token.
 * @property {(url: string | URL | Request, init?: RequestInit, target?: TokenRequest)
 *   => Promise<Response>} fetch Calls `url` (resolved once against `document.baseURI`; in Node
 *   it must be absolute) with a token for `target` (by default, `resource` is that URL without
 *   its query); a redirect is an error unless `init.redirect` says otherwise; a 401 is retried
 *   once, with a newly exchanged token, unless `clear()` ran or the subject token changed.
 * @property {() => void} clear Forgets every token and refusal (sign-out, user change), and
 *   the DPoP key pair: the next token is bound to a new one.
 * @property {() => Promise<string | undefined>} dpopThumbprint The RFC 7638 thumbprint of the
 *   current DPoP key (`cnf.jkt` of the tokens bound to it); undefined without `dpop`.
 * @property {() => void} close Closes the channel between tabs, if `locks` opened one.
 */

const GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token";
// Refresh when this share of a token's lifetime is left (a 300 s token: 60 s ahead) ...
const REFRESH_SHARE = 0.2;
// ... but never more than this ahead, so long-lived tokens are used for most of their life.
const MAX_REFRESH_MARGIN_MS = 60_000;
// Statuses after which the same request may succeed later.
const RETRYABLE = new Set([429, 502, 503, 504]);
// Refusals that no retry will turn into a token: remembered briefly, not asked again.
const NEGATIVE = new Set(["invalid_target", "invalid_scope"]);
// More tries than this are never useful (and a huge maxAttempts would be "retry forever").
const MAX_ATTEMPTS = 10;
// DPoP (RFC 9449): proofs are ES256 JWTs over a P-256 key.
const DPOP_KEY = { name: "ECDSA", namedCurve: "P-256" };
const DPOP_SIGN = { name: "ECDSA", hash: "SHA-256" };
// Methods fetch upper-cases (Fetch "normalize a method"); any other is sent, and proven, as is.
const NORMALISED_METHODS = new Set(["DELETE", "GET", "HEAD", "OPTIONS", "POST", "PUT"]);

/**
 * A refusal or failure of the token endpoint, with its RFC 6749 §5.2 `error` and
 * `error_description` (`status` is the HTTP status, 0 when no answer arrived).
 */
export class TokenExchangeError extends Error {
  /**
   * @param {string} error
   * @param {string} errorDescription
   * @param {{status?: number, retryAfter?: number, cause?: unknown}} [details]
   */
  constructor(error, errorDescription, details = {}) {
    super(errorDescription ? `${error}: ${errorDescription}` : error, { cause: details.cause });
    this.name = "TokenExchangeError";
    /** @type {string} */
    this.error = error;
    /** @type {string} */
    this.error_description = errorDescription;
    /** @type {number} */
    this.status = details.status ?? 0;
    /** Seconds the service asked to wait (`Retry-After`), if it said. @type {number | undefined} */
    this.retryAfter = details.retryAfter;
  }
}

/** The token endpoint is unavailable (503, 429, a gateway error, or no answer): try later. */
export class TokenExchangeUnavailableError extends TokenExchangeError {
  /**
   * @param {string} error
   * @param {string} errorDescription
   * @param {{status?: number, retryAfter?: number, cause?: unknown}} [details]
   */
  constructor(error, errorDescription, details) {
    super(error, errorDescription, details);
    this.name = "TokenExchangeUnavailableError";
  }
}

/**
 * Create a client for one token endpoint and one (public) client.
 *
 * @param {ClientOptions} options
 * @returns {TokenExchangeClient}
 */
export function createTokenExchangeClient(options) {
  const { tokenEndpoint, clientId, getSubjectToken } = options ?? {};
  if (!tokenEndpoint || !clientId || typeof getSubjectToken !== "function") {
    throw new TypeError("tokenEndpoint, clientId and getSubjectToken are required");
  }
  const fetchImpl = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
  const now = options.now ?? Date.now;
  const random = options.random ?? Math.random;
  const sleep = options.sleep ?? ((ms) => new Promise((resolve) => setTimeout(resolve, ms)));
  // Nonsense (NaN, Infinity, a string, a negative) is a TypeError here, not a client that
  // retries forever or waits without bound.
  const maxAttempts = Math.min(MAX_ATTEMPTS, option(options, "maxAttempts", 3, 1, Number.isInteger));
  const maxRetryDelayMs = option(options, "maxRetryDelayMs", 10_000, 0);
  const timeoutMs = option(options, "timeoutMs", 10_000, 1);
  const negativeTtlMs = option(options, "negativeTtlMs", 10_000, 0);
  // A tab waits for another tab's exchange at most as long as that exchange can take.
  const lockWaitMs = maxAttempts * timeoutMs + (maxAttempts - 1) * maxRetryDelayMs + 1_000;
  // Web Locks when asked for (`locks: true`, or a LockManager) and the platform has them.
  const locks = options.locks === true ? globalThis.navigator?.locks : options.locks || undefined;
  const dpop = dpopOption(options.dpop);
  /** @type {Promise<DpopKey> | undefined} the current key, made on first use */
  let dpopKey;
  /** @type {Map<string, string>} the latest DPoP-Nonce each origin sent (RFC 9449 §8, §9) */
  const nonces = new Map();
  /** @type {WeakSet<object>} refusals of /token that came with a nonce we did not have */
  const withNewNonce = new WeakSet();
  // What /token proofs name (htu); resolved once, as fetch resolves the endpoint.
  const tokenUrl = dpop ? absoluteOf(tokenEndpoint) : undefined;

  /** @type {Map<string, {token: string, expiresAt: number, refreshAt: number, key?: DpopKey}>} */
  const cache = new Map(); // memory only: never localStorage or sessionStorage
  /** @type {Map<string, {error: TokenExchangeError, until: number}>} */
  const refused = new Map();
  /** @type {Map<string, Promise<{token: string, key?: DpopKey}>>} */
  const inFlight = new Map();
  let generation = 0; // bumped by clear(): an exchange started before it is not cached
  let currentSubject = ""; // the hash of the last subject token seen

  // With Web Locks, tabs of one origin share what they mint (in memory, by message): a tab that
  // takes a lock after another tab exchanged for that key finds the token in its cache.
  // Not with DPoP: a token bound to this tab's key is of no use to another tab.
  const share =
    locks && !dpop && typeof BroadcastChannel === "function"
      ? new BroadcastChannel(`token-exchange:${clientId}`)
      : undefined;
  if (share) {
    share.onmessage = ({ data }) => {
      // Only for the subject token this tab holds: the key starts with its hash.
      if (currentSubject && data?.key?.startsWith(`${currentSubject}|`) && now() < data.expiresAt) {
        const { token, expiresAt, refreshAt } = data;
        cache.set(data.key, { token, expiresAt, refreshAt });
      }
    };
  }

  function fresh(key) {
    const hit = cache.get(key);
    if (hit && now() < hit.refreshAt) return { token: hit.token, key: hit.key };
    if (hit && now() >= hit.expiresAt) cache.delete(key);
    return undefined;
  }

  /**
   * The token for `params` (from `normalise`): cached, or exchanged. With `onlyFor`, only for
   * that subject (by hash): undefined, with no exchange, when the current subject is another.
   *
   * `dpop` is the key the token is bound to (undefined: a bearer token).
   *
   * @returns {Promise<{key: string, subject: string, token: string, dpop?: DpopKey} | undefined>}
   */
  async function resolve(params, onlyFor) {
    const subjectToken = await subjectTokenOf(getSubjectToken);
    const subject = await sha256(subjectToken);
    if (onlyFor !== undefined && subject !== onlyFor) return undefined;
    // The key is part of the cache key: a token bound to an earlier key (before clear()) is
    // never looked up with a later one.
    const before = generation;
    const proofKey = dpop ? await currentDpopKey() : undefined;
    // clear() ran while the key was made: that key is the previous user's; start again.
    if (before !== generation) return resolve(params, onlyFor);
    if (subject !== currentSubject) {
      // A new sign-in token (another user, or Auth0 renewed it): what was minted for the old
      // one is never served again, so drop it rather than keep it until it expires.
      currentSubject = subject;
      for (const key of cache.keys()) if (!key.startsWith(`${subject}|`)) cache.delete(key);
      for (const key of refused.keys()) if (!key.startsWith(`${subject}|`)) refused.delete(key);
    }
    // The key names the subject by a hash of its token, never by the token itself.
    const key = `${subject}|${proofKey ? proofKey.jkt : ""}|${params.key}`;
    const no = refused.get(key);
    if (no && now() < no.until) throw no.error;
    if (no) refused.delete(key);
    const hit = fresh(key);
    if (hit) return { key, subject, token: hit.token, dpop: hit.key };
    let pending = inFlight.get(key);
    if (!pending) {
      const mine = generation;
      const run = async () => {
        try {
          if (!locks) return await exchange(key, params, subjectToken, mine, proofKey);
          // Across tabs: one exchange per key at a time. Look again once the lock is ours: the
          // tab that held it may have shared its token meanwhile. The wait is bounded: a tab
          // whose exchange hangs does not hold up the others for ever.
          const signal = AbortSignal.timeout(lockWaitMs);
          let locked = false;
          try {
            return await locks.request(`token-exchange:${clientId}:${key}`, { signal }, async () => {
              locked = true;
              return fresh(key) ?? (await exchange(key, params, subjectToken, mine, proofKey));
            });
          } catch (error) {
            if (locked || !signal.aborted) throw error;
            const why = "another tab's exchange for this token did not finish in time";
            throw new TokenExchangeUnavailableError("temporarily_unavailable", why, { cause: error });
          }
        } catch (error) {
          // Refreshing ahead of expiry failed for want of the service: the token we hold is
          // still valid, so use it (never past its expiry).
          const held = cache.get(key);
          if (error instanceof TokenExchangeUnavailableError && held && now() < held.expiresAt) {
            return { token: held.token, key: held.key };
          }
          throw error;
        } finally {
          if (inFlight.get(key) === pending) inFlight.delete(key);
        }
      };
      pending = run();
      inFlight.set(key, pending);
    }
    const minted = await pending;
    return { key, subject, token: minted.token, dpop: minted.key };
  }

  async function exchange(key, params, subjectToken, mine, proofKey) {
    const form = new URLSearchParams({
      grant_type: GRANT_TYPE,
      client_id: clientId,
      subject_token: subjectToken,
      subject_token_type: ACCESS_TOKEN_TYPE,
    });
    for (const resource of params.resources) form.append("resource", resource);
    if (params.audience) form.set("audience", params.audience);
    if (params.scope) form.set("scope", params.scope);
    // Exactly the JSON the cache key was made from.
    if (params.authorizationDetails) form.set("authorization_details", params.authorizationDetails);
    const started = now();
    let answer;
    for (let attempt = 1; ; attempt += 1) {
      try {
        answer = await post(form, proofKey);
        break;
      } catch (error) {
        if (error instanceof TokenExchangeError && NEGATIVE.has(error.error)) {
          if (mine === generation) refused.set(key, { error, until: now() + negativeTtlMs });
          throw error;
        }
        if (!(error instanceof TokenExchangeUnavailableError) || attempt >= maxAttempts) {
          throw error;
        }
        const delay = retryDelay(error.retryAfter, attempt);
        if (delay > maxRetryDelayMs) throw error; // asked to wait longer than we may
        await sleep(delay);
      }
    }
    const expiresIn = Number(answer.expires_in);
    const ttlMs = Number.isFinite(expiresIn) && expiresIn > 0 ? expiresIn * 1000 : 60_000;
    // Counted from when we asked, not from when the answer came; and never past the subject
    // token's own expiry: a minted token must not outlive the sign-in it stands for.
    let expiresAt = started + ttlMs;
    const subjectExp = expiryOf(subjectToken);
    if (subjectExp !== undefined) expiresAt = Math.min(expiresAt, subjectExp);
    // Refresh ahead by a margin that scales with the lifetime (300 s: 60 s; 30 s: 6 s).
    const margin = Math.min(ttlMs * REFRESH_SHARE, MAX_REFRESH_MARGIN_MS);
    // Bound only when the service says so: one that answers `Bearer` (it does not do DPoP) gets
    // its token used as a bearer token.
    const bound = proofKey && String(answer.token_type).toLowerCase() === "dpop";
    const entry = { token: answer.access_token, expiresAt, refreshAt: expiresAt - margin };
    if (mine === generation && key.startsWith(`${currentSubject}|`)) {
      cache.set(key, bound ? { ...entry, key: proofKey } : entry);
      share?.postMessage({ key, ...entry });
    }
    return { token: answer.access_token, key: bound ? proofKey : undefined };
  }

  /** The current DPoP key, made (generated, or asked of `dpop.keyPair`) on first use. */
  function currentDpopKey() {
    if (!dpopKey) {
      const mine = dpopKey = dpopKeyOf(dpop).catch((error) => {
        if (dpopKey === mine) dpopKey = undefined; // the next call tries again
        throw error;
      });
    }
    return dpopKey;
  }

  /** A proof (RFC 9449 §4.2) for `method` `url`, with the origin's latest nonce if any. */
  async function proofFor(proofKey, method, url, accessToken) {
    const claims = {
      jti: randomId(),
      htm: method,
      htu: `${url.origin}${url.pathname}`, // without query and fragment (§4.2)
      iat: Math.floor(now() / 1000),
    };
    const nonce = nonces.get(url.origin);
    if (nonce) claims.nonce = nonce;
    if (accessToken !== undefined) claims.ath = await sha256url(accessToken);
    return signProof(proofKey, claims);
  }

  /** Remembers the `DPoP-Nonce` a response carries, for its origin; true if it is a new one. */
  function noteNonce(url, response) {
    const nonce = response.headers.get("DPoP-Nonce");
    if (!nonce || nonce === nonces.get(url.origin)) return false;
    nonces.set(url.origin, nonce);
    return true;
  }

  // Retry-After is honoured (never earlier), plus jitter so that many clients told the same
  // thing do not all come back at once; without it, exponential backoff with full jitter.
  function retryDelay(retryAfter, attempt) {
    if (retryAfter !== undefined) {
      const base = retryAfter * 1000;
      return base + random() * Math.max(base * 0.25, 100);
    }
    return random() * Math.min(250 * 2 ** attempt, maxRetryDelayMs);
  }

  async function post(form, proofKey) {
    for (let nonceRetry = 0; ; nonceRetry += 1) {
      try {
        return await postOnce(form, proofKey);
      } catch (error) {
        // RFC 9449 §8: the service wants a nonce of its own (given in DPoP-Nonce): one more
        // try with it, and only with a nonce we have not just been refused with.
        const again = proofKey && nonceRetry === 0 && withNewNonce.has(error);
        if (!(again && error.error === "use_dpop_nonce")) {
          throw error;
        }
      }
    }
  }

  async function postOnce(form, proofKey) {
    // One try, answer included, lasts at most timeoutMs: a hung /token is "unavailable".
    const signal = AbortSignal.timeout(timeoutMs);
    const unavailable = (cause) => {
      const why = signal.aborted
        ? `the token endpoint did not answer within ${timeoutMs} ms`
        : "the token endpoint is unreachable";
      return new TokenExchangeUnavailableError("temporarily_unavailable", why, { cause });
    };
    const headers = {
      "Content-Type": "application/x-www-form-urlencoded",
      Accept: "application/json",
    };
    if (proofKey) headers.DPoP = await proofFor(proofKey, "POST", tokenUrl);
    let response;
    try {
      response = await fetchImpl(tokenEndpoint, {
        method: "POST",
        headers,
        body: form.toString(),
        credentials: "omit",
        signal,
      });
    } catch (cause) {
      throw unavailable(cause);
    }
    const newNonce = proofKey ? noteNonce(tokenUrl, response) : false;
    /** @type {any} */
    let answer = {};
    try {
      answer = await response.json();
    } catch (cause) {
      if (signal.aborted) throw unavailable(cause);
      // Not JSON (a proxy's error page): described by its status below.
    }
    if (response.ok && typeof answer?.access_token === "string") return answer;
    const details = {
      status: response.status,
      retryAfter: retryAfterOf(response.headers.get("Retry-After"), now()),
    };
    const fallback = response.ok ? "invalid_response" : "server_error";
    const error = typeof answer?.error === "string" ? answer.error : fallback;
    const description =
      typeof answer?.error_description === "string"
        ? answer.error_description
        : `HTTP ${response.status}`;
    if (RETRYABLE.has(response.status)) {
      throw new TokenExchangeUnavailableError(error, description, details);
    }
    const refusal = new TokenExchangeError(error, description, details);
    if (newNonce) withNewNonce.add(refusal);
    throw refusal;
  }

  async function fetchWithToken(url, init = {}, target = {}) {
    // Resolved once: the URL the token is minted for is the URL it is sent to.
    const absolute = absoluteOf(url);
    const request =
      target.resource || target.audience
        ? target
        : { ...target, resource: `${absolute.origin}${absolute.pathname}` };
    const params = normalise(request);
    // The method as fetch will send it: what a DPoP proof's htm must name.
    const given = init.method ?? (isRequest(url) ? url.method : "GET");
    const method = NORMALISED_METHODS.has(given.toUpperCase()) ? given.toUpperCase() : given;
    const once = async ({ token, dpop: proofKey }) => {
      // A Request's own headers are kept, unless init replaces them (as fetch would).
      const headers = new Headers(init.headers ?? (isRequest(url) ? url.headers : undefined));
      if (proofKey) {
        // RFC 9449 §7.1: the bound token under the DPoP scheme, with a proof for this call.
        headers.set("Authorization", `DPoP ${token}`);
        headers.set("DPoP", await proofFor(proofKey, method, absolute, token));
      } else {
        headers.set("Authorization", `Bearer ${token}`);
        headers.delete("DPoP");
      }
      // The token never follows a redirect unless the caller says so: an open redirect in one
      // API would otherwise hand it to whatever else the origin serves.
      const redirect = init.redirect ?? "error";
      const response = await fetchImpl(isRequest(url) ? url.clone() : absolute.href, {
        ...init,
        headers,
        redirect,
      });
      return { response, newNonce: proofKey ? noteNonce(absolute, response) : false };
    };
    const call = async (minted) => {
      const { response, newNonce } = await once(minted);
      // RFC 9449 §9: the API wants a nonce of its own. One more try with the nonce it gave
      // (not the 401 retry below: the token is fine), and only with a nonce we did not have.
      if (minted.dpop && newNonce && response.status === 401 && wantsNonce(response)) {
        return (await once(minted)).response;
      }
      return response;
    };
    const began = generation;
    const first = await resolve(params);
    const response = await call(first);
    if (response.status !== 401) return response;
    // Signed out or another user since this call began: the 401 is the caller's to see; never
    // resend the call with the next user's token.
    if (generation !== began) return response;
    // The API refused the token (revoked, or its keys rotated): forget it, exchange again
    // once, retry once. Concurrent callers hit by the same 401 share that one new exchange.
    if (cache.get(first.key)?.token === first.token) cache.delete(first.key);
    const second = await resolve(params, first.subject);
    if (!second || generation !== began) return response;
    return call(second);
  }

  function clear() {
    generation += 1;
    cache.clear();
    refused.clear();
    inFlight.clear();
    currentSubject = "";
    // Sign-out or another user: the next token is bound to a new key (the old one is garbage,
    // and was never extractable). Nonces are the servers', not the user's: kept.
    dpopKey = undefined;
  }

  return {
    tokenFor: async (request) => (await resolve(normalise(request))).token,
    fetch: fetchWithToken,
    clear,
    dpopThumbprint: async () => (dpop ? (await currentDpopKey()).jkt : undefined),
    close: () => share?.close(),
  };
}

function normalise(request) {
  const { resource, audience, scope, authorizationDetails } = request ?? {};
  const resources = (Array.isArray(resource) ? resource : resource ? [resource] : []).map(String);
  if (!resources.length && !audience) {
    throw new TypeError("tokenFor needs a resource or an audience");
  }
  const listed = Array.isArray(scope) ? scope : String(scope ?? "").split(/\s+/);
  const scopes = [...new Set(listed.filter(Boolean))].sort();
  // Serialised once: the key is made from exactly what is sent (toJSON applied, undefined
  // dropped), so two requests share a key only when /token is asked the same thing.
  const details =
    authorizationDetails == null ? undefined : JSON.stringify(authorizationDetails);
  resources.sort();
  return {
    resources,
    audience: audience ? String(audience) : "",
    scope: scopes.join(" "),
    authorizationDetails: details,
    // Sorted scopes and resources, canonical JSON: the same question always has the same key.
    key: canonical([
      resources,
      audience ? String(audience) : "",
      scopes,
      details === undefined ? null : JSON.parse(details),
    ]),
  };
}

function canonical(value) {
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
  if (value && typeof value === "object") {
    const fields = Object.keys(value).sort();
    return `{${fields.map((k) => `${JSON.stringify(k)}:${canonical(value[k])}`).join(",")}}`;
  }
  return JSON.stringify(value) ?? "null";
}

async function subjectTokenOf(getSubjectToken) {
  const value = await getSubjectToken();
  // Auth0's getTokenSilently({detailedResponse: true}) answers an object.
  const token = typeof value === "string" ? value : value?.access_token;
  if (typeof token !== "string" || !token) throw new TypeError("getSubjectToken returned no token");
  return token;
}

/**
 * A DPoP key: the pair, its public JWK (the proof header's `jwk`) and RFC 7638 thumbprint.
 * @typedef {{keyPair: CryptoKeyPair, jwk: {kty: string, crv: string, x: string, y: string},
 *   jkt: string}} DpopKey
 */

// `dpop` as given: undefined (off), or what new keys come from.
function dpopOption(value) {
  if (value === undefined || value === false || value === null) return undefined;
  if (value === true) return {};
  if (typeof value === "object" && (value.keyPair === undefined || value.keyPair)) {
    return { keyPair: value.keyPair };
  }
  throw new TypeError("dpop must be true, false or {keyPair}");
}

async function dpopKeyOf(dpop) {
  let keyPair = dpop.keyPair;
  if (typeof keyPair === "function") keyPair = await keyPair();
  else if (keyPair) dpop.keyPair = undefined; // a pair given once: after clear(), a new key
  if (!keyPair) {
    // Non-extractable: the private key never leaves Web Crypto (no exportKey, no copy); its
    // public half can always be exported.
    keyPair = await globalThis.crypto.subtle.generateKey(DPOP_KEY, false, ["sign", "verify"]);
  }
  const { privateKey, publicKey } = keyPair;
  if (
    privateKey?.algorithm?.name !== "ECDSA" ||
    privateKey.algorithm.namedCurve !== "P-256" ||
    !privateKey.usages.includes("sign")
  ) {
    throw new TypeError("dpop.keyPair must be an ECDSA P-256 key pair whose private key signs");
  }
  const { kty, crv, x, y } = await globalThis.crypto.subtle.exportKey("jwk", publicKey);
  // RFC 7638: the required members, in lexicographic order, no whitespace.
  const jkt = await sha256url(JSON.stringify({ crv, kty, x, y }));
  return { keyPair, jwk: { kty, crv, x, y }, jkt };
}

// A compact JWS (ES256) of `claims`: typ dpop+jwt, the public key in the header (§4.2).
async function signProof(proofKey, claims) {
  const header = { typ: "dpop+jwt", alg: "ES256", jwk: proofKey.jwk };
  const part = (value) => base64url(utf8(JSON.stringify(value)));
  const input = `${part(header)}.${part(claims)}`;
  // Web Crypto's ECDSA signature is already JWS's: r || s, 32 bytes each (RFC 7518 §3.4).
  const signature = await globalThis.crypto.subtle.sign(
    DPOP_SIGN,
    proofKey.keyPair.privateKey,
    utf8(input),
  );
  return `${input}.${base64url(new Uint8Array(signature))}`;
}

// Does a 401 ask for a DPoP nonce (RFC 9449 §9: `WWW-Authenticate: DPoP error="use_dpop_nonce"`)?
function wantsNonce(response) {
  const challenge = response.headers.get("WWW-Authenticate") ?? "";
  return /(^|[\s,])DPoP\s[^]*?error\s*=\s*"?use_dpop_nonce"?/i.test(challenge);
}

// 128 random bits, base64url: a proof's jti (RFC 9449 §4.2 asks for at least 96).
function randomId() {
  return base64url(globalThis.crypto.getRandomValues(new Uint8Array(16)));
}

function utf8(text) {
  return new TextEncoder().encode(text);
}

function base64url(bytes) {
  let binary = "";
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

// RFC 9449 §4.2 `ath` (and RFC 7638 thumbprints): base64url of the SHA-256 of the text.
async function sha256url(text) {
  return base64url(new Uint8Array(await globalThis.crypto.subtle.digest("SHA-256", utf8(text))));
}

async function sha256(text) {
  const digest = await globalThis.crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return btoa(String.fromCharCode(...new Uint8Array(digest))).replace(/=+$/, "");
}

// The subject token's `exp`, in ms, when it is a JWT; read, not verified (the service verifies).
function expiryOf(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
    return typeof claims.exp === "number" ? claims.exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

function retryAfterOf(header, nowMs) {
  if (!header) return undefined;
  if (/^\d+$/.test(header.trim())) return Number(header.trim());
  const date = Date.parse(header);
  return Number.isNaN(date) ? undefined : Math.max(0, Math.ceil((date - nowMs) / 1000));
}

function isRequest(value) {
  return typeof Request === "function" && value instanceof Request;
}

// The absolute URL a call goes to: against the document's base URL, as the browser's fetch
// resolves it; where there is no document (Node), a relative URL is an error.
function absoluteOf(url) {
  const text = isRequest(url) ? url.url : String(url);
  const base = globalThis.document?.baseURI ?? globalThis.location?.href;
  try {
    return new URL(text, base);
  } catch (cause) {
    throw new TypeError(`fetch needs an absolute URL here, not ${JSON.stringify(text)}`, { cause });
  }
}

// A number option: its default when absent; a TypeError when it is not a finite number >= min
// (or fails `check`).
function option(options, name, fallback, min, check = () => true) {
  const value = options[name] ?? fallback;
  if (typeof value !== "number" || !Number.isFinite(value) || value < min || !check(value)) {
    throw new TypeError(`${name} must be a finite number >= ${min}, not ${String(value)}`);
  }
  return value;
}
