// The exchange-per-call pattern, with the token service's JavaScript client.
//
// The page holds one sign-in token (from Auth0; here from the development issuer). Before each
// call to a downstream API it exchanges that token at the token service for a short-lived token
// scoped to exactly the resource it is about to touch. The client (clients/js, served by the
// token service at /js/token-exchange-client.js) caches each minted token in memory until
// shortly before it expires, shares one exchange among concurrent calls, retries a 401 from the
// API once with a fresh token, and honours Retry-After when /token answers 503 or 429. The
// sign-in token itself is never sent to the downstream API.
//
// By default the tokens are DPoP-bound (RFC 9449, `dpop: true`): the client holds a
// non-extractable ECDSA key in this tab's memory, every /token request carries a proof signed
// with it, the minted token names the key (cnf.jkt), and every API call sends
// `Authorization: DPoP <token>` with a fresh proof. A copied token is useless without the key,
// which no script can read. Untick "DPoP" to see plain bearer tokens; signing in again (or as
// someone else) drops the key and makes a new one.
//
// With Auth0 (auth0-spa-js >= 2.4) only the subject token's source changes, and Auth0's own
// fetcher can make the calls, with our client as its getAccessToken:
//
//   const auth0 = await createAuth0Client({ domain, clientId: AUTH0_CLIENT_ID,
//     authorizationParams: { audience: "https://sts.example.com" } });
//   const sts = createTokenExchangeClient({ tokenEndpoint: "https://sts.example.com/token",
//     clientId: "spa", getSubjectToken: () => auth0.getTokenSilently() });
//   const countries = auth0.createFetcher({ baseUrl: "https://countries.example.com",
//     getAccessToken: () => sts.tokenFor({ audience: "https://countries.example.com",
//                                          scope: "countries:read" }) });
//   const response = await countries.fetchWithAuth("/countries/nl");
//
// (Auth0's fetcher does not retry a 401, nor signs DPoP proofs; sts.fetch(url, init, { resource,
// scope }), used below, does both. On sign-out or a change of user: sts.clear().)
import {
  TokenExchangeError,
  TokenExchangeUnavailableError,
  createTokenExchangeClient,
} from "../js/token-exchange-client.js";
import { describeClaims } from "./claims.js";

const CLIENT_ID = "spa";

let config = null;        // {sts, api, resource_prefix, countries}
let subjectToken = null;  // the sign-in token
let session = 0;          // bumped on every sign-in: answers for an earlier user are dropped
let sts = null;           // the token exchange client
let dpop = true;          // bind tokens to a key of this tab (RFC 9449)

function $(selector) { return document.querySelector(selector); }

function decodeClaims(jwt) {
  const part = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
  return JSON.parse(atob(part + "=".repeat((4 - part.length % 4) % 4)));
}

// fetch() rejects (TypeError "Failed to fetch") only when no answer arrived at all: the server is
// down, or the answer was blocked (CORS). Say which service, rather than "Refused".
async function call(service, url, options, fetcher = fetch) {
  try {
    return await fetcher(url, options);
  } catch (cause) {
    if (cause instanceof TokenExchangeError) throw cause;  // /token's answer, not the API's
    const error = new Error(`${service} is unreachable at ${url} (${cause.message})`);
    error.stage = "unreachable";
    error.service = service;
    throw error;
  }
}

async function jsonOf(response) {
  try { return await response.json(); } catch { return {}; }
}

// Forget everything about the previous user: tokens, results, claims, grants.
function resetState() {
  session += 1;
  subjectToken = null;
  sts.clear();  // tokens (and the DPoP key) of the previous user are never used again
  const result = $("#result");
  delete result.dataset.country;
  show(result, "none", "No call yet.");
  $("#claims").textContent = "-";
  $("#dpop-key").textContent = dpop ? "A new key is made at sign-in." : "Bearer tokens.";
  delete $("#dpop-key").dataset.jkt;
  $("#user").textContent = "Not signed in.";
  delete $("#user").dataset.user;
  const grants = $("#grants");
  grants.textContent = "Sign in to see what the permissions API grants.";
  delete grants.dataset.user;
  delete grants.dataset.countries;
}

async function signIn(user) {
  resetState();
  const mine = session;
  const response = await call("The token service", `${config.sts}/dev/login`, {
    method: "POST",
    body: new URLSearchParams({ user }),
  });
  const body = await jsonOf(response);
  if (!response.ok) throw new Error(body.error_description || response.statusText);
  if (mine !== session) return;  // another sign-in started meanwhile
  subjectToken = body.access_token;
  $("#user").textContent = `Signed in as ${user}.`;
  $("#user").dataset.user = user;
  await showKey(mine);
  await showGrants(user, mine);
}

// Which key the tokens are bound to: its RFC 7638 thumbprint, the minted tokens' cnf.jkt.
async function showKey(mine) {
  const key = $("#dpop-key");
  const jkt = await sts.dpopThumbprint();
  if (mine !== session) return;
  key.dataset.jkt = jkt ?? "";
  key.textContent = jkt
    ? `Tokens are bound to a non-extractable key of this tab, thumbprint ${jkt} (cnf.jkt).`
    : "Bearer tokens: whoever holds one can use it.";
}

function createClient() {
  return createTokenExchangeClient({
    tokenEndpoint: `${config.sts}/token`,
    clientId: CLIENT_ID,
    getSubjectToken: () => {
      if (!subjectToken) throw new Error("not signed in");
      return subjectToken;
    },
    dpop,
  });
}

// What a call to the countries API touches: exactly one country, to read it.
function targetOf(code) {
  return { resource: `${config.resource_prefix}${code}`, scope: "countries:read" };
}

// Who may see what: one exchange for the whole API (no resource), whose minted token carries
// every country the permissions API grants this user. Nothing about users is written here.
async function showGrants(user, mine) {
  const grants = $("#grants");
  try {
    const token = await sts.tokenFor({ audience: new URL(config.resource_prefix).origin });
    if (mine !== session) return;
    const claims = decodeClaims(token);
    const countries = claims.custom_access_to_countries || [];
    grants.dataset.user = user;
    grants.dataset.countries = countries.join(",");
    grants.textContent =
      `${user} may see: ${countries.join(", ") || "no country"}` +
      ` (scopes: ${claims.scope || "none"}; granted by the permissions API in the minted` +
      ` token's custom_access_to_countries claim). Other countries are refused by /token.`;
  } catch (error) {
    if (mine !== session) return;
    grants.textContent = `Could not ask what ${user} may see: ${error.message}`;
  }
}

async function showCountry(code) {
  const result = $("#result");
  const mine = session;
  result.dataset.country = code;
  if (!subjectToken) {
    show(result, "refused", "Sign in first.");
    return;
  }
  let token = null;
  try {
    // The token is exchanged (or taken from the cache) first only to show its claims; sts.fetch
    // below uses the same cached token, so this costs no second exchange.
    token = await sts.tokenFor(targetOf(code));
    if (mine !== session) return;
    showClaims(token);
    const url = `${config.api}/countries/${code}`;
    const withToken = (u, options) => sts.fetch(u, options, targetOf(code));
    const response = await call("The countries API", url, {}, withToken);
    const body = await jsonOf(response);
    if (mine !== session) return;
    // After a 401 the client exchanged again: show the token the call was made with. Checked
    // again after every await: the user may have changed meanwhile, and this answer is not theirs.
    const used = await sts.tokenFor(targetOf(code));
    if (mine !== session) return;
    showClaims(used);
    if (!response.ok) {
      const detail = body.error_description ? `: ${body.error_description}` : "";
      const error = new Error(`${response.status} ${body.error || response.statusText}${detail}`);
      error.stage = "api";
      throw error;
    }
    show(result, "allowed", `${body.name}: capital ${body.capital} (seen by ${body.viewer})`);
  } catch (error) {
    if (mine !== session) return;
    if (!token) $("#claims").textContent = "-";
    if (error.stage === "unreachable") {
      const hint = error.service === "The countries API"
        ? " /token granted the token; is examples/countries_api.py running?" : "";
      show(result, "unreachable", `${error.message}.${hint}`);
    } else if (error instanceof TokenExchangeUnavailableError) {
      const after = error.retryAfter ? `; try again in ${error.retryAfter} s` : "";
      show(result, "unavailable", `The token service is unavailable: ${error.message}${after}`);
    } else if (error instanceof TokenExchangeError) {
      show(result, "refused", `Refused by /token: ${error.message}`);
    } else if (error.stage === "api") {
      show(result, "refused", `Refused by the countries API: ${error.message}`);
    } else {
      show(result, "refused", `Failed: ${error.message}`);
    }
  }
}

// The claims' JSON; exp, iat (and nbf) followed by their date and time in the reader's zone.
function showClaims(token) {
  $("#claims").textContent = describeClaims(decodeClaims(token));
}

function show(element, outcome, text) {
  element.dataset.outcome = outcome;
  element.className = outcome;
  element.textContent = text;
}

// For tests and for the curious, from the browser's console: n calls at once for one country
// (they share one exchange), answering each call's HTTP status.
async function burst(code, n) {
  const url = `${config.api}/countries/${code}`;
  const calls = Array.from({ length: n }, () => sts.fetch(url, {}, targetOf(code)));
  return (await Promise.all(calls)).map((response) => response.status);
}

async function main() {
  config = await (await fetch("config.json")).json();
  sts = createClient();
  window.tokenExchangeDemo = { burst, client: sts };
  // DPoP on or off: a new client, and signed out (its tokens were of the other kind).
  $("#dpop").checked = dpop;
  $("#dpop").addEventListener("change", () => {
    dpop = $("#dpop").checked;
    sts.clear();
    sts = createClient();
    window.tokenExchangeDemo.client = sts;
    resetState();
  });
  $("#endpoints").textContent = `Token service: ${config.sts} - countries API: ${config.api}`;
  for (const button of document.querySelectorAll("button[data-user]")) {
    button.addEventListener("click", () => signIn(button.dataset.user).catch((e) => {
      $("#user").textContent = `Sign-in failed: ${e.message}`;
    }));
  }
  for (const code of config.countries) {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.country = code;
    button.textContent = code.toUpperCase();
    button.addEventListener("click", () => showCountry(code));
    $("#countries").append(button);
  }
  document.body.dataset.ready = "true";
}

main();
