/**
 * An Aho–Corasick automaton over UTF-16 code units: finds whether any of many
 * terms occurs in a text in one pass, whatever the number of terms. The trie's
 * edges live in one Map keyed by `state * 65536 + codeUnit`. When it fits,
 * the automaton is also compiled into a DFA: every (state, code unit class)
 * → next state in one Int32Array, failure links folded in, the classes being
 * the code units that occur in some term plus one for all others. A text is
 * then scanned with two array reads per code unit.
 */
export interface Automaton {
  /** Whether any term occurs in `text`. */
  test(text: string): boolean;
}

const unit = 65_536;

/** Most cells of a DFA table (4 bytes each): 10,000 terms of Latin letters need about 1.6 M. */
const defaultMaxDenseCells = 4_194_304;

/**
 * Builds the automaton of `terms` (empty terms are ignored); `maxDenseCells`
 * bounds the DFA table, beyond which the trie is walked with its failure links.
 */
export function buildAutomaton(
  terms: readonly string[],
  maxDenseCells = defaultMaxDenseCells,
): Automaton {
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

  const dense = compileDfa(edges, fail, queue, states, terms, maxDenseCells);
  if (dense !== undefined) {
    const { classOf, classes, delta } = dense;
    return {
      test(text) {
        let state = 0;
        for (let i = 0; i < text.length; i++) {
          const k = classOf[text.charCodeAt(i)] as number;
          state = k === 0 ? 0 : (delta[state * classes + k] as number);
          if (out[state] === 1) return true;
        }
        return false;
      },
    };
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

/**
 * The DFA of the trie: `delta[state * classes + classOf[codeUnit]]`, class 0
 * (no term has that code unit) always back to the root. Undefined when the
 * table would pass `maxCells`.
 */
function compileDfa(
  edges: ReadonlyMap<number, number>,
  fail: Int32Array,
  /** Every state but the root, breadth first (a state's failure target comes earlier). */
  order: readonly number[],
  states: number,
  terms: readonly string[],
  maxCells: number,
) {
  const classOf = new Uint16Array(unit);
  const codeOfClass = [0];
  for (const term of terms) {
    for (let i = 0; i < term.length; i++) {
      const code = term.charCodeAt(i);
      if (classOf[code] === 0) {
        if (codeOfClass.length === unit - 1) return undefined;
        classOf[code] = codeOfClass.length;
        codeOfClass.push(code);
      }
    }
  }
  const classes = codeOfClass.length;
  if (classes * states > maxCells) return undefined;
  const delta = new Int32Array(classes * states);
  for (let k = 1; k < classes; k++) {
    delta[k] = edges.get(codeOfClass[k] as number) ?? 0;
  }
  for (const state of order) {
    const row = state * classes;
    const failRow = (fail[state] as number) * classes;
    for (let k = 1; k < classes; k++) {
      delta[row + k] =
        edges.get(state * unit + (codeOfClass[k] as number)) ?? (delta[failRow + k] as number);
    }
  }
  return { classOf, classes, delta };
}
