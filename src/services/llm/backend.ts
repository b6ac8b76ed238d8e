/** What a model is asked. */
export interface LlmRequest {
  readonly text: string;
  readonly userId: string;
}

/** What a model answered. */
export interface LlmResult {
  readonly reply: string;
}

/**
 * A model behind the LLM service. `signal` aborts when the caller cancels or
 * its deadline passes; a backend stops its work then.
 */
export interface LlmBackend {
  readonly name: string;
  generate(request: LlmRequest, signal: AbortSignal): Promise<LlmResult>;
  /**
   * The same reply as `generate`, in pieces as the model produces them: the
   * pieces joined are the whole reply. Iteration ends early (throwing the
   * abort reason) once `signal` aborts.
   */
  stream(request: LlmRequest, signal: AbortSignal): AsyncIterable<string>;
}
