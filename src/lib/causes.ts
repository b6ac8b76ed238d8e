/** `err` and its causes, five deep at most (a cause chain may loop). */
export function* causesOf(err: unknown): Generator<Error> {
  for (let at = err, depth = 0; at instanceof Error && depth < 5; at = at.cause, depth++) yield at;
}
