/**
 * The headers every HTTP answer of a node carries: no sniffing, no framing, no referrer to other
 * origins, no caching, and a content security policy that lets the page load only its own code.
 */

/**
 * `same-origin`, not `no-referrer`: with no referrer at all, Chromium sends `Origin: null` on the
 * page's own form posts (log out), which the Origin check must refuse. Other origins get nothing.
 */
export const securityHeaders = {
  "x-content-type-options": "nosniff",
  "referrer-policy": "same-origin",
  "x-frame-options": "DENY",
  // xterm.js sets inline styles on the elements it draws; scripts only from this origin.
  "content-security-policy":
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; " +
    "connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
  "cache-control": "no-store"
} as const

/** For Server-Sent Events: nothing may buffer, transform or cache the stream. */
export const sseHeaders = {
  ...securityHeaders,
  "cache-control": "no-cache, no-store, no-transform",
  "x-accel-buffering": "no"
} as const
