/**
 * Per-session and per-job proxy tokens: `vibes-session.<session id>.<mac>` and
 * `vibes-job.<job id>.<mac>`, where the MAC is an HMAC-SHA256 of the kind and id under a key
 * derived from the admin token. A token names its session or job (so the proxy attributes the
 * request to it) and proves the server made it; it grants the proxy only, and only while its
 * session or job runs (the proxy keeps the set of those). Nothing is stored: a new admin token
 * invalidates every token.
 */
import * as crypto from "node:crypto"
import { Option, Redacted } from "effect"

/** Who a proxy request comes from. */
export type ProxyClient =
  | { readonly kind: "admin" }
  | { readonly kind: "session"; readonly sessionId: string }
  | { readonly kind: "job"; readonly jobId: string }

/** A session or a job: what a token is minted for. */
export type Holder =
  { readonly kind: "session"; readonly id: string } | { readonly kind: "job"; readonly id: string }

/** The holder of a client's token, none for the admin. */
export const holderOf = (client: ProxyClient): Option.Option<Holder> =>
  client.kind === "session"
    ? Option.some({ kind: "session", id: client.sessionId })
    : client.kind === "job"
      ? Option.some({ kind: "job", id: client.jobId })
      : Option.none()

/** The key of a holder in sets of live ones. */
export const holderKey = (holder: Holder): string => `${holder.kind}:${holder.id}`

/** Mints and checks the tokens of one server. */
export interface ProxyTokens {
  readonly mint: (holder: Holder) => string
  readonly verify: (token: string) => Option.Option<ProxyClient>
}

const prefixes = { session: "vibes-session.", job: "vibes-job." } as const

/** Tokens keyed by `admin` (the admin token), which also passes `verify` as the admin. */
export const make = (admin: {
  readonly token: Redacted.Redacted<string>
  readonly verify: (candidate: string) => boolean
}): ProxyTokens => {
  const key = crypto
    .createHash("sha256")
    .update(`vibes proxy tokens\0${Redacted.value(admin.token)}`)
    .digest()
  // Sessions keep the MAC of the bare id that their tokens always had.
  const mac = (holder: Holder) =>
    crypto
      .createHmac("sha256", key)
      .update(holder.kind === "session" ? holder.id : `job\0${holder.id}`)
      .digest("base64url")
  const check = (kind: Holder["kind"], token: string): Option.Option<ProxyClient> => {
    const rest = token.slice(prefixes[kind].length)
    const dot = rest.lastIndexOf(".")
    if (dot <= 0) return Option.none()
    const id = rest.slice(0, dot)
    const given = Buffer.from(rest.slice(dot + 1))
    const expected = Buffer.from(mac({ kind, id }))
    if (given.length !== expected.length || !crypto.timingSafeEqual(given, expected)) return Option.none()
    return Option.some(kind === "session" ? { kind, sessionId: id } : { kind, jobId: id })
  }
  return {
    mint: (holder) => `${prefixes[holder.kind]}${holder.id}.${mac(holder)}`,
    verify: (token) => {
      if (token.startsWith(prefixes.session)) return check("session", token)
      if (token.startsWith(prefixes.job)) return check("job", token)
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
