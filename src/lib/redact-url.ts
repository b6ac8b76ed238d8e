/**
 * A URL as it may be printed: the password of its user info, if any, is
 * replaced by `***`. Works on any string, malformed URLs included, since
 * those are the ones error lines print: the user info runs from after
 * `scheme://` (or from the start) to the last `@`, so a password holding
 * `/`, `@` or `:` is hidden whole. A value it cannot tell apart (`a:b@c`
 * with no `//`) is masked from its first `:`, which may hide more than the
 * password but never shows it.
 */
export function redactUrl(raw: string): string {
  const at = raw.lastIndexOf("@");
  if (at === -1) return raw;
  const slashes = raw.indexOf("://");
  const userStart = slashes !== -1 && slashes < at ? slashes + 3 : 0;
  const colon = raw.indexOf(":", userStart);
  if (colon === -1 || colon > at) return raw;
  return `${raw.slice(0, colon + 1)}***${raw.slice(at)}`;
}
