// The smallest JavaScript function: succeeds without doing anything (for benchmarks).
export function handle(events) {}
