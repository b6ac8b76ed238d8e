/** A JSON object of a request body, its fields not checked yet. */
export type Body = Record<string, unknown>;

/** Whether a JSON value is an object (not null, not an array). */
export const isRecord = (value: unknown): value is Body =>
  typeof value === "object" && value !== null && !Array.isArray(value);
