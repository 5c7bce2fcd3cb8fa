// A minted token's claims as the page shows them: its JSON, with each NumericDate claim (RFC 7519
// §2: exp, iat, nbf, auth_time; seconds since 1970) followed by the date and time it stands for,
// in the reader's locale and time zone, and how far that is from when it was shown:
//
//   "exp": 1795670173,  // 20 Nov 2026, 14:36:13 (in 5 minutes)
//
// No DOM here, so Node imports it too (tests/test_spa_claims.py).

const TIMES = new Set(["exp", "iat", "nbf", "auth_time"]);
// Only top-level members: two spaces of indentation, as JSON.stringify(claims, null, 2) writes them.
const MEMBER = /^ {2}"([a-z_]+)": (-?\d+(?:\.\d+)?)(,?)$/;
const UNITS = [["day", 86400], ["hour", 3600], ["minute", 60], ["second", 1]];

/** `seconds` (a NumericDate) relative to `nowMs`: "in 5 minutes", "12 seconds ago", "now". */
function relative(seconds, nowMs, locale) {
  const delta = seconds - nowMs / 1000;
  const [unit, size] = UNITS.find(([, size]) => Math.abs(delta) >= size) ?? UNITS[UNITS.length - 1];
  return new Intl.RelativeTimeFormat(locale, { numeric: "auto" }).format(Math.round(delta / size), unit);
}

/**
 * The claims as indented JSON, each time claim annotated with its readable date and time.
 * `locale` and `timeZone` default to the reader's; `now` (ms) to the current time.
 */
export function describeClaims(claims, { now = Date.now(), locale = undefined, timeZone = undefined } = {}) {
  const dates = new Intl.DateTimeFormat(locale, { dateStyle: "medium", timeStyle: "medium", timeZone });
  return JSON.stringify(claims, null, 2)
    .split("\n")
    .map((line) => {
      const match = MEMBER.exec(line);
      if (!match || !TIMES.has(match[1])) return line;
      const seconds = Number(match[2]);
      const when = new Date(seconds * 1000);
      if (Number.isNaN(when.getTime())) return line;
      return `${line}  // ${dates.format(when)} (${relative(seconds, now, locale)})`;
    })
    .join("\n");
}
