// Type declarations for token-exchange-client.js (an ES module without a build step).

export interface LockManagerLike {
  request<T>(name: string, callback: () => Promise<T>): Promise<T>;
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
  /** Tries of `/token` per exchange while it is unavailable (default 3). */
  maxAttempts?: number;
  /** Longest wait between tries in ms (default 10000); a longer `Retry-After` fails at once. */
  maxRetryDelayMs?: number;
  /** How long an `invalid_target` / `invalid_scope` refusal is remembered, in ms (default 10000). */
  negativeTtlMs?: number;
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
   * `fetch(url, init)` with `Authorization: Bearer <token for target>`; the target defaults to
   * `resource` = `url` without its query. A 401 is retried once with a newly exchanged token.
   */
  fetch(url: string | URL | Request, init?: RequestInit, target?: TokenRequest): Promise<Response>;
  /** Forget every token and refusal: on sign-out and on a change of user. */
  clear(): void;
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
