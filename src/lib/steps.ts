import { setImmediate as turn } from "node:timers/promises";

/**
 * Work done in steps: a generator that yields now and then, so that a long
 * piece of work can let the event loop serve in between.
 */
export type Steps<T> = Generator<void, T, void>;

/** Runs `steps` to the end at once. */
export function runSteps<T>(steps: Steps<T>): T {
  for (;;) {
    const step = steps.next();
    if (step.done) return step.value;
  }
}

/**
 * Runs `steps` in slices of about `sliceMs`, giving the event loop a turn
 * after each: calls keep being served while the work goes on. Undefined
 * when `cancelled()` turns true between two slices (the work is dropped).
 */
export async function runStepsInSlices<T>(
  steps: Steps<T>,
  cancelled: () => boolean = () => false,
  sliceMs = 5,
): Promise<T | undefined> {
  for (;;) {
    const end = performance.now() + sliceMs;
    do {
      const step = steps.next();
      if (step.done) return step.value;
    } while (performance.now() < end);
    await turn();
    if (cancelled()) {
      steps.return(undefined as T);
      return undefined;
    }
  }
}
