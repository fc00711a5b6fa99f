/**
 * The host names a node answers to (`VIBES_ALLOWED_HOSTS`). A request whose `Host` is not one of
 * them is refused before anything else happens, so a page on another site that points its own
 * name at 127.0.0.1 (DNS rebinding) cannot talk to a node on the user's machine.
 */
import * as net from "node:net"
import { Either } from "effect"

/** The allowed names: exact names, `*.suffix` wildcards, or everything. */
export interface AllowedHosts {
  readonly any: boolean
  readonly exact: ReadonlySet<string>
  /** Suffixes of `*.suffix` entries, with their leading dot. */
  readonly suffixes: ReadonlyArray<string>
  /** The list as configured, for messages. */
  readonly entries: ReadonlyArray<string>
}

/** The names of this machine's loopback interface. */
export const loopbackNames: ReadonlyArray<string> = ["localhost", "*.localhost", "127.0.0.1", "::1"]

/** Whether `host` (a listen address) is on the loopback interface only. */
export const isLoopback = (host: string): boolean => {
  const bare = host.replace(/^\[|\]$/g, "").toLowerCase()
  return bare === "localhost" || bare === "::1" || (net.isIPv4(bare) && bare.startsWith("127."))
}

const entryPattern = /^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$/

/** Parses a list of names (`*` for any); fails with the first entry that is not a host name or address. */
export const make = (entries: ReadonlyArray<string>): Either.Either<AllowedHosts, string> => {
  const exact = new Set<string>()
  const suffixes: Array<string> = []
  let any = false
  for (const raw of entries) {
    const entry = raw
      .trim()
      .toLowerCase()
      .replace(/^\[|\]$/g, "")
    if (entry === "") continue
    if (entry === "*") {
      any = true
    } else if (net.isIP(entry) !== 0) {
      exact.add(entry)
    } else if (entryPattern.test(entry)) {
      if (entry.startsWith("*.")) suffixes.push(entry.slice(1))
      else exact.add(entry)
    } else {
      return Either.left(`'${raw}' is not a host name, an IP address, '*.domain' or '*'`)
    }
  }
  return Either.right({ any, exact, suffixes, entries })
}

/**
 * The allowed hosts of a node listening on `listenHost`: the configured list, else the loopback
 * names when it listens on loopback. Listening elsewhere without a list is refused: the names
 * people use to reach the node cannot be guessed, and `*` must be chosen explicitly.
 */
export const resolve = (
  listenHost: string,
  configured: ReadonlyArray<string> | undefined
): Either.Either<AllowedHosts, string> => {
  if (configured !== undefined && configured.length > 0) return make(configured)
  if (isLoopback(listenHost)) return make(loopbackNames)
  return Either.left(
    `VIBES_ALLOWED_HOSTS is required when listening on ${listenHost}: list the names clients use to ` +
      `reach this node (e.g. vibes.example.com,10.0.0.5), or '*' to accept any Host header`
  )
}

/** The name in a `Host` header value, without the port and brackets; undefined when malformed. */
export const hostName = (header: string): string | undefined => {
  const value = header.trim().toLowerCase()
  if (value.startsWith("[")) {
    const end = value.indexOf("]")
    if (end < 0) return undefined
    const rest = value.slice(end + 1)
    if (rest !== "" && !/^:\d{1,5}$/.test(rest)) return undefined
    return value.slice(1, end)
  }
  const colon = value.lastIndexOf(":")
  if (colon >= 0) {
    if (!/^\d{1,5}$/.test(value.slice(colon + 1))) return undefined
    return value.slice(0, colon)
  }
  return value
}

/** Whether a request with this `Host` header value may be served. */
export const allows = (allowed: AllowedHosts, header: string | undefined): boolean => {
  if (allowed.any) return true
  if (header === undefined) return false
  const name = hostName(header)
  if (name === undefined || name === "") return false
  return allowed.exact.has(name) || allowed.suffixes.some((suffix) => name.endsWith(suffix))
}
