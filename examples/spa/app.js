// The exchange-per-call pattern, in plain JavaScript.
//
// The page holds one sign-in token (from Auth0; here from the development issuer). Before each
// call to a downstream API it exchanges that token at the token service for a short-lived token
// scoped to exactly the resource it is about to touch, and caches it until shortly before it
// expires. The sign-in token itself is never sent to the downstream API.
"use strict";

const GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token";
const CLIENT_ID = "spa";
// Re-exchange when a cached token has less than this left.
const REFRESH_MARGIN_MS = 30_000;

let config = null;        // {sts, api, resource_prefix, countries}
let subjectToken = null;  // the sign-in token
let session = 0;          // bumped on every sign-in: answers for an earlier user are dropped
const minted = new Map(); // resource -> {token, expiresAt}

function $(selector) { return document.querySelector(selector); }

function decodeClaims(jwt) {
  const part = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
  return JSON.parse(atob(part + "=".repeat((4 - part.length % 4) % 4)));
}

// fetch() rejects (TypeError "Failed to fetch") only when no answer arrived at all: the server is
// down, or the answer was blocked (CORS). Say which service, rather than "Refused".
async function call(service, url, options) {
  try {
    return await fetch(url, options);
  } catch (cause) {
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
  minted.clear();
  const result = $("#result");
  delete result.dataset.country;
  show(result, "none", "No call yet.");
  $("#claims").textContent = "-";
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
  await showGrants(user, mine);
}

// RFC 8693 token exchange: one form POST, no client secret (a public client).
async function postExchange(fields) {
  const response = await call("The token service", `${config.sts}/token`, {
    method: "POST",
    body: new URLSearchParams({
      grant_type: GRANT_TYPE,
      client_id: CLIENT_ID,
      subject_token: subjectToken,
      subject_token_type: ACCESS_TOKEN_TYPE,
      ...fields,
    }),
  });
  const body = await jsonOf(response);
  if (!response.ok) {
    const error = new Error(`${body.error}: ${body.error_description}`);
    error.stage = "exchange";
    throw error;
  }
  return body;
}

async function exchange(resource, scope) {
  const cached = minted.get(resource);
  if (cached && cached.expiresAt - REFRESH_MARGIN_MS > Date.now()) return cached.token;
  const body = await postExchange({ resource, scope });
  minted.set(resource, { token: body.access_token, expiresAt: Date.now() + body.expires_in * 1000 });
  return body.access_token;
}

// Who may see what: one exchange for the whole API (no resource), whose minted token carries
// every country the permissions API grants this user. Nothing about users is written here.
async function showGrants(user, mine) {
  const grants = $("#grants");
  try {
    const body = await postExchange({ audience: new URL(config.resource_prefix).origin });
    if (mine !== session) return;
    const claims = decodeClaims(body.access_token);
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
    token = await exchange(`${config.resource_prefix}${code}`, "countries:read");
    if (mine !== session) return;
    $("#claims").textContent = JSON.stringify(decodeClaims(token), null, 2);
    const response = await call("The countries API", `${config.api}/countries/${code}`, {
      headers: { Authorization: `Bearer ${token}` },
    });
    const body = await jsonOf(response);
    if (mine !== session) return;
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
    } else if (error.stage === "exchange") {
      show(result, "refused", `Refused by /token: ${error.message}`);
    } else if (error.stage === "api") {
      show(result, "refused", `Refused by the countries API: ${error.message}`);
    } else {
      show(result, "refused", `Failed: ${error.message}`);
    }
  }
}

function show(element, outcome, text) {
  element.dataset.outcome = outcome;
  element.className = outcome;
  element.textContent = text;
}

async function main() {
  config = await (await fetch("config.json")).json();
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
