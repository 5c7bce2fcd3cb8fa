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

let config = null;        // {sts, api, resource_prefix, countries, users}
let subjectToken = null;  // the sign-in token
const minted = new Map(); // resource -> {token, expiresAt}

function $(selector) { return document.querySelector(selector); }

function decodeClaims(jwt) {
  const part = jwt.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
  return JSON.parse(atob(part + "=".repeat((4 - part.length % 4) % 4)));
}

async function signIn(user) {
  const response = await fetch(`${config.sts}/dev/login`, {
    method: "POST",
    body: new URLSearchParams({ user }),
  });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error_description || response.statusText);
  subjectToken = body.access_token;
  minted.clear();
  $("#user").textContent = `Signed in as ${user}.`;
  $("#user").dataset.user = user;
}

// RFC 8693 token exchange: one form POST, no client secret (a public client).
async function exchange(resource, scope) {
  const cached = minted.get(resource);
  if (cached && cached.expiresAt - REFRESH_MARGIN_MS > Date.now()) return cached.token;
  const response = await fetch(`${config.sts}/token`, {
    method: "POST",
    body: new URLSearchParams({
      grant_type: GRANT_TYPE,
      client_id: CLIENT_ID,
      subject_token: subjectToken,
      subject_token_type: ACCESS_TOKEN_TYPE,
      resource,
      scope,
    }),
  });
  const body = await response.json();
  if (!response.ok) {
    const error = new Error(`${body.error}: ${body.error_description}`);
    error.stage = "exchange";
    throw error;
  }
  minted.set(resource, { token: body.access_token, expiresAt: Date.now() + body.expires_in * 1000 });
  return body.access_token;
}

async function showCountry(code) {
  const result = $("#result");
  result.dataset.country = code;
  if (!subjectToken) {
    show(result, "refused", "Sign in first.");
    return;
  }
  try {
    const token = await exchange(`${config.resource_prefix}${code}`, "countries:read");
    $("#claims").textContent = JSON.stringify(decodeClaims(token), null, 2);
    const response = await fetch(`${config.api}/countries/${code}`, {
      headers: { Authorization: `Bearer ${token}` },
    });
    const body = await response.json();
    if (!response.ok) throw new Error(`${response.status} ${body.error}`);
    show(result, "allowed", `${body.name}: capital ${body.capital} (seen by ${body.viewer})`);
  } catch (error) {
    if (error.stage === "exchange") $("#claims").textContent = "-";
    show(result, "refused", `Refused: ${error.message}`);
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
