// onceq for Node.js: the HTTP client (`Client`), the worker (`Worker`), effectively-once
// processing (`effectivelyOnce`). The Express middleware is `onceq/express`.

export * from "./client.js";
export * from "./errors.js";
export * from "./types.js";
export * from "./outcome.js";
export * from "./worker.js";
export * from "./effectively-once.js";
