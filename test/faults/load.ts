/** What one chat of the load got. */
export interface Outcome {
  readonly user: string;
  readonly text: string;
  /** 0 when no HTTP answer came (see `error`). */
  readonly status: number;
  readonly body: unknown;
  readonly ms: number;
  /** Why no answer came: a reset connection, a hang past the deadline… */
  readonly error?: string;
}

export interface LoadOptions {
  readonly gatewayUrl: string;
  /** Workers sending chats one after another. */
  readonly concurrency: number;
  /** Shortest time between two chats of one worker, so the load stays bounded. */
  readonly paceMs: number;
  /** A chat with no answer after this long counts as hung. */
  readonly deadlineMs: number;
}

/** A running load: stop() ends it and resolves once every worker's last chat is answered. */
export interface Load {
  readonly outcomes: Outcome[];
  stop(): Promise<void>;
}

function describeError(err: unknown): string {
  const cause = (err as { cause?: { code?: string; message?: string } }).cause;
  if ((err as Error).name === "TimeoutError") return "hung past the deadline";
  return cause?.code ?? cause?.message ?? String(err);
}

/**
 * Sends chats from `concurrency` workers, each as user `w<i>` with texts
 * unique to the run, until stopped, recording every answer or failure.
 */
export function startLoad(options: LoadOptions): Load {
  const outcomes: Outcome[] = [];
  let stopped = false;
  const worker = async (i: number) => {
    const user = `w${i}`;
    for (let n = 0; !stopped; n++) {
      const text = `${user} chat ${n}`;
      const started = performance.now();
      try {
        const res = await fetch(`${options.gatewayUrl}/chat`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ user_id: user, text }),
          signal: AbortSignal.timeout(options.deadlineMs),
        });
        const body: unknown = await res.json();
        outcomes.push({ user, text, status: res.status, body, ms: performance.now() - started });
      } catch (err) {
        const ms = performance.now() - started;
        outcomes.push({ user, text, status: 0, body: null, ms, error: describeError(err) });
      }
      const rest = options.paceMs - (performance.now() - started);
      if (rest > 0) await new Promise((r) => setTimeout(r, rest));
    }
  };
  const workers = Promise.all(Array.from({ length: options.concurrency }, (_, i) => worker(i)));
  return {
    outcomes,
    async stop() {
      stopped = true;
      await workers;
    },
  };
}
