/**
 * Per-session proxy tokens: `vibes-session.<session id>.<mac>`, where the MAC is an HMAC-SHA256 of
 * the session id under a key derived from the admin token. A token names its session (so the
 * proxy attributes the request to it) and proves the server made it; it grants the proxy only.
 * Nothing is stored: a new admin token invalidates every session token.
 */
import * as crypto from "node:crypto"
import { Option, Redacted } from "effect"

const prefix = "vibes-session."

/** Who a proxy request comes from. */
export type ProxyClient =
  { readonly kind: "admin" } | { readonly kind: "session"; readonly sessionId: string }

/** Mints and checks the tokens of one server. */
export interface ProxyTokens {
  readonly mint: (sessionId: string) => string
  readonly verify: (token: string) => Option.Option<ProxyClient>
}

/** Tokens keyed by `admin` (the admin token), which also passes `verify` as the admin. */
export const make = (admin: {
  readonly token: Redacted.Redacted<string>
  readonly verify: (candidate: string) => boolean
}): ProxyTokens => {
  const key = crypto
    .createHash("sha256")
    .update(`vibes proxy tokens\0${Redacted.value(admin.token)}`)
    .digest()
  const mac = (sessionId: string) => crypto.createHmac("sha256", key).update(sessionId).digest("base64url")
  return {
    mint: (sessionId) => `${prefix}${sessionId}.${mac(sessionId)}`,
    verify: (token) => {
      if (token.startsWith(prefix)) {
        const rest = token.slice(prefix.length)
        const dot = rest.lastIndexOf(".")
        if (dot <= 0) return Option.none()
        const sessionId = rest.slice(0, dot)
        const given = Buffer.from(rest.slice(dot + 1))
        const expected = Buffer.from(mac(sessionId))
        return given.length === expected.length && crypto.timingSafeEqual(given, expected)
          ? Option.some({ kind: "session", sessionId })
          : Option.none()
      }
      return admin.verify(token) ? Option.some({ kind: "admin" }) : Option.none()
    }
  }
}

/** The credential a proxy request carries: `authorization: Bearer …`, else `x-api-key`. */
export const presented = (
  headers: Readonly<Record<string, string | ReadonlyArray<string> | undefined>>
): Option.Option<string> => {
  const authorization = headers["authorization"]
  if (typeof authorization === "string") {
    const match = /^Bearer\s+(\S+)\s*$/i.exec(authorization)
    if (match?.[1] !== undefined) return Option.some(match[1])
  }
  const apiKey = headers["x-api-key"]
  return typeof apiKey === "string" && apiKey.trim() !== "" ? Option.some(apiKey.trim()) : Option.none()
}
