// oauth4webapi (panva) as a user would use it against our service: RFC 8414 discovery, a DPoP
// handle, an RFC 8693 token exchange at /token, then a DPoP call to the countries API.
//
//   node o4w_dpop.mjs '{"issuer": "http://127.0.0.1:PORT", "subjectToken": "...", ...}'
//
// Input (one JSON argument): issuer, subjectToken, audience, scope, apiUrl, clientId and, for a
// confidential client, clientSecret. Output (one JSON line on stdout): what each step sent and
// got, for tests/test_interop_oauth4webapi.py to assert on; the proofs it sent are included so
// the test can replay them. Bad proofs for the API are made with oauth4webapi's own
// modifyAssertion hook, so they are signed exactly as its good ones are.
import * as oauth from 'oauth4webapi'

const GRANT = 'urn:ietf:params:oauth:grant-type:token-exchange'
const ACCESS_TOKEN = 'urn:ietf:params:oauth:token-type:access_token'

const input = JSON.parse(process.argv[2])
const issuer = new URL(input.issuer)
// Our dev/test issuer is plain http on loopback; oauth4webapi refuses http unless told, and
// is told only for loopback.
const insecure = issuer.protocol === 'http:' && ['127.0.0.1', 'localhost', '[::1]'].includes(issuer.hostname)

/** Every request oauth4webapi makes, as sent and as answered (a custom fetch), by phase. */
const sent = []
let phase = 'main'
async function recordingFetch(url, options) {
  const response = await fetch(url, options)
  const record = {
    phase,
    url,
    method: options.method,
    dpop: options.headers.dpop ?? null,
    authorization_scheme: (options.headers.authorization ?? '').split(' ')[0] || null,
    status: response.status,
    dpop_nonce: response.headers.get('dpop-nonce'),
    www_authenticate: response.headers.get('www-authenticate'),
  }
  if ((response.headers.get('content-type') ?? '').startsWith('application/json')) {
    record.body = await response.clone().json()
    delete record.body.access_token // the test reads the token from the result, once
  }
  sent.push(record)
  return response
}
const http = { [oauth.customFetch]: recordingFetch, ...(insecure ? { [oauth.allowInsecureRequests]: true } : {}) }

const as = await oauth.processDiscoveryResponse(
  issuer,
  await oauth.discoveryRequest(issuer, { algorithm: 'oauth2', ...http }),
)
const client = { client_id: input.clientId }
const clientAuth = input.clientSecret ? oauth.ClientSecretPost(input.clientSecret) : oauth.None()
const keyPair = await oauth.generateKeyPair('ES256')
const DPoP = oauth.DPoP(client, keyPair)

const parameters = new URLSearchParams({
  subject_token: input.subjectToken,
  subject_token_type: ACCESS_TOKEN,
  audience: input.audience,
  scope: input.scope,
})
const exchange = () =>
  oauth.genericTokenEndpointRequest(as, client, clientAuth, GRANT, parameters, { DPoP, ...http })

// The documented nonce handling: a use_dpop_nonce error means "retry once"; the handle has kept
// the DPoP-Nonce the error came with and puts it in the next proof.
let result
try {
  result = await oauth.processGenericTokenEndpointResponse(as, client, await exchange())
} catch (err) {
  if (!oauth.isDPoPNonceError(err)) throw err
  result = await oauth.processGenericTokenEndpointResponse(as, client, await exchange())
}

async function callApi(handle, accessToken = result.access_token) {
  try {
    const response = await oauth.protectedResourceRequest(
      accessToken, 'GET', new URL(input.apiUrl), new Headers(), null, { DPoP: handle, ...http },
    )
    return { status: response.status, body: await response.json() }
  } catch (err) {
    if (!(err instanceof oauth.WWWAuthenticateChallengeError)) throw err
    return { status: err.status, challenges: err.cause }
  }
}

const api = await callApi(DPoP)
phase = 'attacks'

/** A handle on the same key whose proofs are changed just before they are signed. */
const tampered = (change) => oauth.DPoP(client, keyPair, { [oauth.modifyAssertion]: (_header, payload) => change(payload) })
const attacks = {
  other_url: await callApi(tampered((p) => { p.htu = new URL('/countries/de', input.apiUrl).href })),
  other_method: await callApi(tampered((p) => { p.htm = 'POST' })),
  stale_iat: await callApi(tampered((p) => { p.iat -= 300 })),
  no_ath: await callApi(tampered((p) => { delete p.ath })),
  wrong_ath: await callApi(tampered((p) => { p.ath = 'A'.repeat(43) })),
  other_key: await callApi(oauth.DPoP(client, await oauth.generateKeyPair('ES256'))),
}

// A DPoP-bound subject token (as Auth0 issues them): the test's fake issuer binds one to our
// key (mintUrl?jkt=...). oauth4webapi puts no ath in token-endpoint proofs, so the
// modifyAssertion hook adds the subject token's hash, as RFC 9449 §4.2 and Connect2id's token
// exchange want it.
const b64u = (bytes) => Buffer.from(bytes).toString('base64url')
const sha256 = async (text) => b64u(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(text)))
let boundSubject
if (input.mintUrl) {
  phase = 'bound_subject'
  const jkt = await DPoP.calculateThumbprint()
  const subjectToken = await (await fetch(`${input.mintUrl}?jkt=${jkt}`)).text()
  const withAth = (ath, pair = keyPair) => oauth.DPoP(client, pair, { [oauth.modifyAssertion]: (_header, payload) => { payload.ath = ath } })
  const exchangeBound = async (handle) => {
    const params = new URLSearchParams(parameters)
    params.set('subject_token', subjectToken)
    try {
      const response = await oauth.genericTokenEndpointRequest(as, client, clientAuth, GRANT, params, { DPoP: handle, ...http })
      const got = await oauth.processGenericTokenEndpointResponse(as, client, response)
      return { status: 200, token_type: got.token_type, access_token: got.access_token }
    } catch (err) {
      if (!(err instanceof oauth.ResponseBodyError)) throw err
      return { status: err.status, error: err.error, error_description: err.error_description }
    }
  }
  const ath = await sha256(subjectToken)
  boundSubject = {
    with_ath: await exchangeBound(withAth(ath)),
    no_ath: await exchangeBound(oauth.DPoP(client, keyPair)),
    wrong_ath: await exchangeBound(withAth(await sha256('another token'))),
    other_key: await exchangeBound(withAth(ath, await oauth.generateKeyPair('ES256'))),
  }
}

console.log(JSON.stringify({
  metadata: { issuer: as.issuer, token_endpoint: as.token_endpoint, dpop_signing_alg_values_supported: as.dpop_signing_alg_values_supported },
  public_jwk: await crypto.subtle.exportKey('jwk', keyPair.publicKey),
  jkt: await DPoP.calculateThumbprint(),
  token: { access_token: result.access_token, token_type: result.token_type, expires_in: result.expires_in, issued_token_type: result.issued_token_type },
  api,
  attacks,
  bound_subject: boundSubject,
  sent,
}))
