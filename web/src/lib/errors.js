/** The API's typed error (docs/api.md "Errors"), or a network failure (status 0). */
export class ApiError extends Error {
  /** @param {number} status @param {any} body */
  constructor(status, body) {
    const e = body && typeof body === 'object' && body.error ? body.error : null;
    super(e?.message ?? (status === 0 ? 'The server cannot be reached.' : `HTTP ${status}`));
    this.status = status;
    this.code = e?.code ?? (status === 0 ? 'NETWORK_ERROR' : `HTTP_${status}`);
    this.class = e?.class ?? null;
    this.suggestion = e?._suggestion ?? (status === 0 ? 'Check that Cairn is running, then retry.' : null);
    this.details = e?.details ?? null;
    this.retryable = e?.retryable ?? status === 0;
  }
}
