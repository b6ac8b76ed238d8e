import { isUtf8 } from "node:buffer";
import { errorCodes, type FastifyInstance, type FastifyRequest } from "fastify";

// With the u flag a well-formed surrogate pair is one code point, so only lone halves match.
const loneSurrogate = /\p{Cs}/u;

/**
 * Whether `value` can be a user id: a non-empty string of whole Unicode
 * characters. A lone surrogate (JSON allows `"\ud800"`) is refused: protobuf
 * would turn it into U+FFFD on the way to the services, so two different ids
 * would share one quota and one history.
 */
export function isUserId(value: unknown): value is string {
  return typeof value === "string" && value !== "" && !loneSurrogate.test(value);
}

/**
 * Whether the query string of `url` is percent-encoded UTF-8. The query
 * parser keeps a value it cannot decode as it is: `user_id=%E9` (é in
 * Latin-1) would read the history of a user called `%E9`.
 */
export function hasDecodableQuery(url: string): boolean {
  const query = url.indexOf("?");
  if (query === -1 || !url.includes("%", query)) return true;
  try {
    decodeURIComponent(url.slice(query + 1));
    return true;
  } catch {
    return false;
  }
}

/** The 400 of a query string `hasDecodableQuery` refuses. */
export const undecodableQuery = "query string is not percent-encoded UTF-8";

const bodyMethods = new Set(["POST", "PUT", "PATCH"]);
const charsetParam = /;\s*charset\s*=\s*"?([^";\s]*)"?/i;

/**
 * Refuses request bodies the JSON parser would misread rather than reject:
 * with 415 a charset other than UTF-8 (JSON is UTF-8, RFC 8259) and any
 * content coding (Fastify does not decompress, so a gzip body would be parsed
 * as if it were plain text); with 400, as JSON that does not parse, bytes that
 * are not UTF-8. Decoded as it was, each bad sequence became U+FFFD, so
 * `"X\xff"` and `"X\xfe"` were one user id, sharing one quota and history.
 */
export function registerBodyGuards(
  app: FastifyInstance,
  /** Told of each request refused here, with its status and the error's words (to count it). */
  onRefuse: (req: FastifyRequest, status: number, error: string) => void = () => {},
): void {
  const parseJson = app.getDefaultJsonParser("error", "error");
  app.removeContentTypeParser("application/json");
  app.addContentTypeParser("application/json", { parseAs: "buffer" }, (req, body, done) => {
    // Fastify parses the body of a path or method no route serves too: its
    // 404 or 405 comes first, whatever the body is.
    if (req.is404) return done(null, undefined);
    if (!isUtf8(body as Buffer)) return done(new errorCodes.FST_ERR_CTP_INVALID_JSON_BODY());
    parseJson(req, body.toString("utf8"), done);
  });
  // Before the body is read, and after the API key check (an earlier
  // preParsing hook): a request without a valid key gets its 401 first.
  app.addHook("preParsing", async (req, reply, payload) => {
    if (!bodyMethods.has(req.method) || req.is404) return payload;
    const encoding = req.headers["content-encoding"];
    const refuse = (error: string) => {
      onRefuse(req, 415, error);
      return reply.code(415).send({ error });
    };
    if (encoding !== undefined && encoding.trim().toLowerCase() !== "identity") {
      return refuse("content-encoding not supported");
    }
    const charset = charsetParam.exec(req.headers["content-type"] ?? "")?.[1]?.toLowerCase();
    if (charset !== undefined && charset !== "utf-8" && charset !== "utf8") {
      return refuse("content-type must be application/json");
    }
    return payload;
  });
}
