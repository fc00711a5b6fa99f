/**
 * OpenSSH known_hosts files: which host keys a host is expected to present. Supports plain and
 * hashed host names, wildcard patterns with negation, and `@revoked` lines; `@cert-authority`
 * lines are skipped (certificates are not supported).
 */
import { createHash, createHmac, timingSafeEqual } from "node:crypto"
import * as fs from "node:fs"
import { Effect, Schema } from "effect"

/** The known_hosts file exists but cannot be read. */
export class KnownHostsUnreadable extends Schema.TaggedError<KnownHostsUnreadable>()("KnownHostsUnreadable", {
  path: Schema.String,
  message: Schema.String
}) {}

type HostMatcher =
  | { readonly _tag: "Hashed"; readonly salt: Buffer; readonly hash: Buffer }
  | {
      readonly _tag: "Patterns"
      readonly patterns: ReadonlyArray<{ readonly negated: boolean; readonly regex: RegExp }>
    }

/** One key line of a known_hosts file. */
export interface Entry {
  readonly line: number
  readonly revoked: boolean
  readonly hosts: HostMatcher
  readonly keyType: string
  /** The key blob as sent on the wire (the base64 field, decoded). */
  readonly key: Buffer
}

/** How a presented host key relates to the entries for that host. */
export type Verdict =
  | { readonly _tag: "Known"; readonly line: number }
  | { readonly _tag: "Revoked"; readonly line: number }
  | { readonly _tag: "Changed"; readonly lines: ReadonlyArray<number> }
  | { readonly _tag: "Unknown" }

/** The name a host has in known_hosts: `host`, or `[host]:port` for a port other than 22. */
export const hostName = (host: string, port: number): string =>
  (port === 22 ? host : `[${host}]:${port}`).toLowerCase()

/** OpenSSH's fingerprint of a key blob: `SHA256:` and the unpadded base64 of its SHA-256. */
export const fingerprint = (key: Uint8Array): string =>
  `SHA256:${createHash("sha256").update(key).digest("base64").replace(/=+$/, "")}`

/** The key type written at the start of a key blob (`ssh-ed25519`, …), if it is well-formed. */
export const keyTypeOf = (key: Uint8Array): string | undefined => {
  if (key.length < 4) return undefined
  const length = Buffer.from(key.buffer, key.byteOffset, key.byteLength).readUInt32BE(0)
  if (length === 0 || length > key.length - 4) return undefined
  return Buffer.from(key.subarray(4, 4 + length)).toString("latin1")
}

const patternRegex = (pattern: string): RegExp =>
  new RegExp(
    `^${pattern
      .split("")
      .map((char) => (char === "*" ? ".*" : char === "?" ? "." : char.replace(/[\\^$.|+()[\]{}]/g, "\\$&")))
      .join("")}$`,
    "i"
  )

const parseHosts = (field: string): HostMatcher | undefined => {
  if (field.startsWith("|1|")) {
    const [salt, hash] = field.slice(3).split("|")
    if (salt === undefined || hash === undefined) return undefined
    return { _tag: "Hashed", salt: Buffer.from(salt, "base64"), hash: Buffer.from(hash, "base64") }
  }
  const patterns = field
    .split(",")
    .filter((pattern) => pattern.length > 0)
    .map((pattern) =>
      pattern.startsWith("!")
        ? { negated: true, regex: patternRegex(pattern.slice(1)) }
        : { negated: false, regex: patternRegex(pattern) }
    )
  return patterns.length > 0 ? { _tag: "Patterns", patterns } : undefined
}

/** The key lines of a known_hosts file; comments, blank, malformed and `@cert-authority` lines are left out. */
export const parse = (text: string): ReadonlyArray<Entry> =>
  text.split(/\r?\n/).flatMap((raw, index): ReadonlyArray<Entry> => {
    const fields = raw.trim().split(/\s+/)
    if (fields[0] === undefined || fields[0] === "" || fields[0].startsWith("#")) return []
    const marker = fields[0].startsWith("@") ? fields.shift() : undefined
    if (marker !== undefined && marker !== "@revoked") return []
    const [hostsField, keyType, keyField] = fields
    if (hostsField === undefined || keyType === undefined || keyField === undefined) return []
    const hosts = parseHosts(hostsField)
    const key = Buffer.from(keyField, "base64")
    if (hosts === undefined || keyTypeOf(key) !== keyType) return []
    return [{ line: index + 1, revoked: marker === "@revoked", hosts, keyType, key }]
  })

/** The entries of the file at `path`; a missing file has none. */
export const read = (path: string): Effect.Effect<ReadonlyArray<Entry>, KnownHostsUnreadable> =>
  Effect.tryPromise({
    try: () => fs.promises.readFile(path, "utf8"),
    catch: (error) => error
  }).pipe(
    Effect.map(parse),
    Effect.catchAll((error) =>
      error instanceof Error && "code" in error && error.code === "ENOENT"
        ? Effect.succeed([])
        : Effect.fail(
            new KnownHostsUnreadable({
              path,
              message: `cannot read known_hosts file ${path}: ${error instanceof Error ? error.message : String(error)}`
            })
          )
    )
  )

const matchesHost = (hosts: HostMatcher, name: string): boolean => {
  if (hosts._tag === "Hashed") {
    const digest = createHmac("sha1", hosts.salt).update(name).digest()
    return digest.length === hosts.hash.length && timingSafeEqual(digest, hosts.hash)
  }
  let matched = false
  for (const pattern of hosts.patterns) {
    if (pattern.regex.test(name)) {
      if (pattern.negated) return false
      matched = true
    }
  }
  return matched
}

/** The entries that name `host` on `port`. */
export const entriesFor = (
  entries: ReadonlyArray<Entry>,
  host: string,
  port: number
): ReadonlyArray<Entry> => {
  const name = hostName(host, port)
  return entries.filter((entry) => matchesHost(entry.hosts, name))
}

/** Checks the key `host` presented on `port` (compared by key type and blob). */
export const check = (entries: ReadonlyArray<Entry>, host: string, port: number, key: Buffer): Verdict => {
  const forHost = entriesFor(entries, host, port)
  const type = keyTypeOf(key)
  const same = (entry: Entry) => entry.keyType === type && entry.key.equals(key)
  const revoked = forHost.find((entry) => entry.revoked && same(entry))
  if (revoked !== undefined) return { _tag: "Revoked", line: revoked.line }
  const accepted = forHost.filter((entry) => !entry.revoked)
  const known = accepted.find(same)
  if (known !== undefined) return { _tag: "Known", line: known.line }
  return accepted.length > 0
    ? { _tag: "Changed", lines: accepted.map((entry) => entry.line) }
    : { _tag: "Unknown" }
}
