import { runSteps, type Steps } from "../../lib/steps.js";

/**
 * An Aho–Corasick automaton over UTF-16 code units: finds whether any of many
 * terms occurs in a text in one pass, whatever the number of terms. Code
 * units are read through classes: one for each unit that occurs in some term,
 * plus class 0 for all others. When it fits, the automaton is a DFA: every
 * (state, class) → next state in one Int32Array, failure links folded in,
 * built without any other table of the trie; a text is then scanned with two
 * array reads per code unit. Otherwise the trie's edges live in one Map keyed
 * by `state * classes + class`, walked with the failure links.
 */
export interface Automaton {
  /** Whether any term occurs in `text`. */
  test(text: string): boolean;
}

/** About how many cells or code units a build goes through between two of its steps. */
const stepWork = 32_768;

/**
 * Most cells of a DFA table (4 bytes each) while it is built, bounded by a
 * state for each code unit of the terms: 10,000 terms of 4–12 Latin letters
 * need about 2.2 M, 50,000 about 11 M; the table kept holds the states used.
 */
const defaultMaxDenseCells = 16_777_216;

/** The class of each code unit (0: in no term), and how many classes there are. */
function classesOf(terms: readonly string[]): { classOf: Int32Array; classes: number } {
  const classOf = new Int32Array(65_536);
  let classes = 1;
  for (const term of terms) {
    for (let i = 0; i < term.length; i++) {
      const code = term.charCodeAt(i);
      if (classOf[code] === 0) classOf[code] = classes++;
    }
  }
  return { classOf, classes };
}

/**
 * Builds the automaton of `terms` (empty terms are ignored); `maxDenseCells`
 * bounds the DFA table, beyond which the trie is walked with its failure links.
 */
export function buildAutomaton(
  terms: readonly string[],
  maxDenseCells = defaultMaxDenseCells,
): Automaton {
  return runSteps(automatonSteps(terms, maxDenseCells));
}

/** `buildAutomaton` in steps of about `stepWork` cells or code units each. */
export function* automatonSteps(
  terms: readonly string[],
  maxDenseCells = defaultMaxDenseCells,
): Steps<Automaton> {
  const { classOf, classes } = classesOf(terms);
  // The trie has at most one state per code unit of the terms, and the root.
  let bound = 1;
  for (const term of terms) bound += term.length;
  yield;
  return bound * classes <= maxDenseCells
    ? yield* dfaSteps(terms, classOf, classes, bound)
    : yield* sparseSteps(terms, classOf, classes, bound, maxDenseCells);
}

/** Where a trie keeps its edges, by `state * classes + class`: a DFA table or a Map. */
interface TrieEdges {
  get(key: number): number | undefined;
  set(key: number, next: number): unknown;
}

/**
 * Runs `step` until it returns undefined, yielding each time the work it
 * reports adds up to about `stepWork`. The loops of a build run here, their
 * bodies in plain functions: V8 optimises those, not a long loop inside a
 * generator (a list of 100,000 terms took about four times as long that way).
 */
function* stepsOf(step: () => number | undefined): Steps<void> {
  let work = 0;
  for (;;) {
    const done = step();
    if (done === undefined) return;
    work += done;
    if (work > stepWork) {
      work = 0;
      yield;
    }
  }
}

/**
 * Puts `terms` into the trie of `edges`, marking in `out` the states where a
 * term ends; returns how many states there are.
 */
function* trieSteps(
  terms: readonly string[],
  classOf: Int32Array,
  classes: number,
  edges: TrieEdges,
  out: Uint8Array,
): Steps<number> {
  let states = 1;
  let next = 0;
  yield* stepsOf(() => {
    const term = terms[next++];
    if (term === undefined) return undefined;
    if (term === "") return 1;
    let state = 0;
    for (let i = 0; i < term.length; i++) {
      const key = state * classes + (classOf[term.charCodeAt(i)] as number);
      let child = edges.get(key);
      if (child === undefined) {
        child = states++;
        edges.set(key, child);
      }
      state = child;
    }
    out[state] = 1;
    return term.length;
  });
  return states;
}

/** Scans with the DFA `delta` (rows of `classes` cells); `out[state]` is 1 where a term ends. */
function dfaAutomaton(
  classOf: Int32Array,
  classes: number,
  delta: Int32Array,
  out: Uint8Array,
): Automaton {
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

/**
 * The DFA, built in place: the trie's edges are written into `delta` first
 * (0: none, since no edge leads back to the root), then, breadth first, each
 * state's missing cells are copied from its failure state's row, complete by
 * then since that state is shallower.
 */
function* dfaSteps(
  terms: readonly string[],
  classOf: Int32Array,
  classes: number,
  bound: number,
): Steps<Automaton> {
  const delta = new Int32Array(bound * classes);
  const out = new Uint8Array(bound);
  const cells: TrieEdges = {
    get: (key) => (delta[key] === 0 ? undefined : delta[key]),
    set: (key, next) => {
      delta[key] = next;
    },
  };
  const states = yield* trieSteps(terms, classOf, classes, cells, out);

  const fail = new Int32Array(states);
  const queue = new Int32Array(states);
  let tail = 0;
  for (let k = 1; k < classes; k++) {
    const child = delta[k] as number;
    if (child !== 0) queue[tail++] = child;
  }
  let head = 0;
  yield* stepsOf(() => {
    if (head === tail) return undefined;
    const state = queue[head++] as number;
    const failRow = (fail[state] as number) * classes;
    if (out[fail[state] as number] === 1) out[state] = 1;
    const row = state * classes;
    for (let k = 1; k < classes; k++) {
      const child = delta[row + k] as number;
      if (child === 0) {
        delta[row + k] = delta[failRow + k] as number;
      } else {
        fail[child] = delta[failRow + k] as number;
        queue[tail++] = child;
      }
    }
    return classes;
  });
  // Shared prefixes leave fewer states than the bound the table was made for.
  const used = states < bound;
  return dfaAutomaton(
    classOf,
    classes,
    used ? delta.slice(0, states * classes) : delta,
    used ? out.slice(0, states) : out,
  );
}

/**
 * The trie's edges in a Map, with failure links; compiled into a DFA after
 * all when the states, fewer than their bound, fit in `maxDenseCells`.
 */
function* sparseSteps(
  terms: readonly string[],
  classOf: Int32Array,
  classes: number,
  bound: number,
  maxDenseCells: number,
): Steps<Automaton> {
  const edges = new Map<number, number>();
  const out = new Uint8Array(bound);
  const states = yield* trieSteps(terms, classOf, classes, edges, out);

  // Each state's edges as (class, child) pairs, from the Map.
  const children: number[][] = [];
  yield* stepsOf(() => {
    if (children.length === states) return undefined;
    children.push([]);
    return 1;
  });
  const pending = edges.entries();
  yield* stepsOf(() => {
    const entry = pending.next();
    if (entry.done === true) return undefined;
    const [key, child] = entry.value;
    children[Math.floor(key / classes)]?.push(key % classes, child);
    return 1;
  });

  // Failure links, breadth first; a state is terminal when any suffix is.
  const fail = new Int32Array(states);
  const queue: number[] = [];
  const rootChildren = children[0] ?? [];
  for (let i = 1; i < rootChildren.length; i += 2) queue.push(rootChildren[i] as number);
  let head = 0;
  yield* stepsOf(() => {
    if (head === queue.length) return undefined;
    const state = queue[head++] as number;
    if (out[fail[state] as number] === 1) out[state] = 1;
    const kids = children[state] ?? [];
    let work = 1;
    for (let i = 0; i < kids.length; i += 2) {
      const k = kids[i] as number;
      const child = kids[i + 1] as number;
      let f = fail[state] as number;
      let target = edges.get(f * classes + k);
      while (target === undefined && f !== 0) {
        f = fail[f] as number;
        target = edges.get(f * classes + k);
        work++;
      }
      fail[child] = target ?? 0;
      queue.push(child);
      work++;
    }
    return work;
  });

  if (states * classes <= maxDenseCells) {
    // Each state's row is its failure state's (complete by then: it is
    // shallower), with the state's own edges written over it.
    const delta = new Int32Array(states * classes);
    for (let i = 0; i < rootChildren.length; i += 2) {
      delta[rootChildren[i] as number] = rootChildren[i + 1] as number;
    }
    let next = 0;
    yield* stepsOf(() => {
      const state = queue[next++];
      if (state === undefined) return undefined;
      const row = state * classes;
      const failRow = (fail[state] as number) * classes;
      delta.copyWithin(row, failRow, failRow + classes);
      const kids = children[state] ?? [];
      for (let i = 0; i < kids.length; i += 2) {
        delta[row + (kids[i] as number)] = kids[i + 1] as number;
      }
      return classes;
    });
    return dfaAutomaton(classOf, classes, delta, out.slice(0, states));
  }

  return {
    test(text) {
      let state = 0;
      for (let i = 0; i < text.length; i++) {
        const k = classOf[text.charCodeAt(i)] as number;
        if (k === 0) {
          state = 0;
          continue;
        }
        let next = edges.get(state * classes + k);
        while (next === undefined && state !== 0) {
          state = fail[state] as number;
          next = edges.get(state * classes + k);
        }
        state = next ?? 0;
        if (out[state] === 1) return true;
      }
      return false;
    },
  };
}
