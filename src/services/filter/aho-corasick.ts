/**
 * An Aho–Corasick automaton over UTF-16 code units: finds whether any of many
 * terms occurs in a text in one pass, whatever the number of terms. Edges of
 * all states live in one Map keyed by `state * 65536 + codeUnit`.
 */
export interface Automaton {
  /** Whether any term occurs in `text`. */
  test(text: string): boolean;
}

const unit = 65_536;

/** Builds the automaton of `terms` (empty terms are ignored). */
export function buildAutomaton(terms: readonly string[]): Automaton {
  const edges = new Map<number, number>();
  const terminal: boolean[] = [false];
  let states = 1;
  for (const term of terms) {
    if (term === "") continue;
    let state = 0;
    for (let i = 0; i < term.length; i++) {
      const key = state * unit + term.charCodeAt(i);
      let next = edges.get(key);
      if (next === undefined) {
        next = states++;
        edges.set(key, next);
        terminal.push(false);
      }
      state = next;
    }
    terminal[state] = true;
  }

  // Failure links, breadth first; a state is terminal when any suffix is.
  const children: number[][] = Array.from({ length: states }, () => []);
  for (const [key, next] of edges) children[Math.floor(key / unit)]?.push(key % unit, next);
  const fail = new Int32Array(states);
  const out = new Uint8Array(states);
  const queue: number[] = [];
  const rootChildren = children[0] ?? [];
  for (let i = 1; i < rootChildren.length; i += 2) queue.push(rootChildren[i] as number);
  for (let head = 0; head < queue.length; head++) {
    const state = queue[head] as number;
    out[state] = terminal[state] || out[fail[state] as number] ? 1 : 0;
    const kids = children[state] ?? [];
    for (let i = 0; i < kids.length; i += 2) {
      const code = kids[i] as number;
      const child = kids[i + 1] as number;
      let f = fail[state] as number;
      let target = edges.get(f * unit + code);
      while (target === undefined && f !== 0) {
        f = fail[f] as number;
        target = edges.get(f * unit + code);
      }
      fail[child] = target ?? 0;
      queue.push(child);
    }
  }

  return {
    test(text) {
      let state = 0;
      for (let i = 0; i < text.length; i++) {
        const code = text.charCodeAt(i);
        let next = edges.get(state * unit + code);
        while (next === undefined && state !== 0) {
          state = fail[state] as number;
          next = edges.get(state * unit + code);
        }
        state = next ?? 0;
        if (out[state] === 1) return true;
      }
      return false;
    },
  };
}
