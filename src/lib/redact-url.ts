/**
 * A URL as it may be printed: the password of its user info, if any, and
 * the values of query parameters named like secrets are replaced by `***`.
 * Works on any string, malformed URLs included, since
 * those are the ones error lines print: the user info runs from after
 * `scheme://` (or from the start) to the last `@`, so a password holding
 * `/`, `@` or `:` is hidden whole. A value it cannot tell apart (`a:b@c`
 * with no `//`) is masked from its first `:`, which may hide more than the
 * password but never shows it.
 */
export function redactUrl(raw: string): string {
  return redactUserInfo(raw).replace(secretParam, "$1***");
}

/**
 * A query parameter that may hold a secret (`?password=`, `&sslkey=`,
 * `auth_token=`): clients such as ioredis and mysql2 take their options
 * from the query string too.
 */
const secretParam = /([?&][^=&#]*(?:pass|pwd|secret|token|key|auth)[^=&#]*=)[^&#]*/gi;

function redactUserInfo(raw: string): string {
  const at = raw.lastIndexOf("@");
  if (at === -1) return raw;
  const slashes = raw.indexOf("://");
  const userStart = slashes !== -1 && slashes < at ? slashes + 3 : 0;
  const colon = raw.indexOf(":", userStart);
  if (colon === -1 || colon > at) return raw;
  return `${raw.slice(0, colon + 1)}***${raw.slice(at)}`;
}
