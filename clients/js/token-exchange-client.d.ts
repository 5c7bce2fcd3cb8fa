// Type declarations for token-exchange-client.js (an ES module without a build step).

/** `navigator.locks`, or anything that takes a lock the same way (and honours `signal`). */
export interface LockManagerLike {
  request<T>(name: string, options: { signal?: AbortSignal }, callback: () => Promise<T>): Promise<T>;
}

/** DPoP (RFC 9449) with a key of one's own. */
export interface DpopOptions {
  /**
   * The ECDSA P-256 key pair that signs proofs (ES256), or a function returning one, called for
   * every new key: the first, and the next after each `clear()`. A pair (not a function) is
   * used until the first `clear()`, then the client generates one. Default: generated with
   * `crypto.subtle.generateKey({name: "ECDSA", namedCurve: "P-256"}, false, ["sign", "verify"])`,
   * non-extractable. Another kind of key is a `TypeError` from the first `tokenFor`/`fetch`.
   */
  keyPair?: CryptoKeyPair | (() => CryptoKeyPair | Promise<CryptoKeyPair>);
}

export interface ClientOptions {
  /** The token service's `/token` URL. */
  tokenEndpoint: string;
  /** This app's (public) client id at the token service. */
  clientId: string;
  /** The current sign-in token: Auth0's `() => auth0.getTokenSilently()`. */
  getSubjectToken: () => Promise<string | { access_token: string }> | string;
  /** `true`: coordinate tabs with `navigator.locks` (ignored where there are none); default off. */
  locks?: boolean | LockManagerLike;
  /**
   * Tries of `/token` per exchange while it is unavailable: an integer >= 1 (default 3); more
   * than 10 counts as 10. Anything else is a `TypeError` from `createTokenExchangeClient`.
   */
  maxAttempts?: number;
  /**
   * Longest wait between tries in ms, finite and >= 0 (default 10000); a longer `Retry-After`
   * fails at once.
   */
  maxRetryDelayMs?: number;
  /**
   * How long one try of `/token` may take in ms, answer included, finite and > 0 (default
   * 10000). A try that takes longer is unavailable: retried within `maxAttempts`, then a
   * `TokenExchangeUnavailableError`. With `locks`, a tab waits for another tab's exchange at
   * most as long as that exchange can take (maxAttempts × timeoutMs + (maxAttempts − 1) ×
   * maxRetryDelayMs, plus 1 s), then fails with a `TokenExchangeUnavailableError`.
   */
  timeoutMs?: number;
  /**
   * How long an `invalid_target` / `invalid_scope` refusal is remembered, in ms, finite and >= 0
   * (default 10000).
   */
  negativeTtlMs?: number;
  /**
   * DPoP (RFC 9449), default off. `true`: the client generates a non-extractable ES256 key pair
   * and keeps it in memory for its life (until `clear()`); every `/token` request carries a
   * proof (`htm` POST, `htu` the endpoint), and a token the service answers as `token_type:
   * "DPoP"` is sent as `Authorization: DPoP <token>` with a proof for each call (`htm`, `htu`,
   * `ath`). A token answered as `Bearer` (a service without DPoP) is used as a bearer token. A
   * `use_dpop_nonce` refusal (400 from `/token`, 401 from an API) is retried once with the
   * `DPoP-Nonce` it came with; the latest nonce of each origin goes into the next proof.
   * `{keyPair}`: see `DpopOptions`.
   */
  dpop?: boolean | DpopOptions;
  /** The fetch to use (default: the global one). */
  fetch?: typeof globalThis.fetch;
  /** Clock in ms (default `Date.now`); for tests. */
  now?: () => number;
  /** Jitter source in [0, 1) (default `Math.random`); for tests. */
  random?: () => number;
  /** How to wait (default `setTimeout`); for tests. */
  sleep?: (ms: number) => Promise<void>;
}

export interface TokenRequest {
  /** RFC 8693 `resource`: the URL (or URLs) the call touches. */
  resource?: string | string[];
  /** RFC 8693 `audience`: the API, by its identifier. */
  audience?: string;
  /** Space-separated scopes, or a list. */
  scope?: string | string[];
  /** RFC 9396 authorization details. */
  authorizationDetails?: object[];
}

export interface TokenExchangeClient {
  /** A minted access token for `request`, from the cache while it is fresh. */
  tokenFor(request: TokenRequest): Promise<string>;
  /**
   * `fetch(url, init)` with `Authorization: Bearer <token for target>` (with `dpop`, and a
   * DPoP-bound token: `Authorization: DPoP <token>` and a `DPoP` proof for this method and URL;
   * a `401` with `WWW-Authenticate: DPoP error="use_dpop_nonce"` and a new `DPoP-Nonce` is sent
   * once more with that nonce, before and apart from the 401 retry below). `url` is resolved once,
   * against `document.baseURI` (in Node it must be absolute, else a `TypeError`), and that URL is
   * both called and, by default, the target: `resource` = the URL without its query. A redirect
   * is an error (the token never follows one) unless `init.redirect` says otherwise. A 401 is
   * retried once with a newly exchanged token, unless `clear()` ran or the subject token changed
   * since the call began: then the 401 is returned.
   */
  fetch(url: string | URL | Request, init?: RequestInit, target?: TokenRequest): Promise<Response>;
  /**
   * Forget every token and refusal: on sign-out and on a change of user. With `dpop`, the key
   * pair too: the next token is bound to a new key (tokens bound to the old one are never sent
   * again: the cache key holds the key's thumbprint).
   */
  clear(): void;
  /**
   * With `dpop`: the RFC 7638 thumbprint of the current key, i.e. the `cnf.jkt` of the tokens
   * bound to it (the key is made if there is none yet). Without: `undefined`.
   */
  dpopThumbprint(): Promise<string | undefined>;
  /** Close the channel between tabs that `locks` opens. */
  close(): void;
}

/** A refusal or failure of the token endpoint (RFC 6749 §5.2). */
export class TokenExchangeError extends Error {
  constructor(
    error: string,
    errorDescription: string,
    details?: { status?: number; retryAfter?: number; cause?: unknown },
  );
  /** The OAuth error code, e.g. `invalid_target`. */
  readonly error: string;
  readonly error_description: string;
  /** The HTTP status; 0 when no answer arrived. */
  readonly status: number;
  /** Seconds the service asked to wait (`Retry-After`), when it said. */
  readonly retryAfter: number | undefined;
}

/** `/token` is unavailable (503, 429, a gateway error, or no answer) after every try. */
export class TokenExchangeUnavailableError extends TokenExchangeError {}

export function createTokenExchangeClient(options: ClientOptions): TokenExchangeClient;
