/**
 * Who is on the other end of a request: the socket's peer, or — only when that peer is a trusted
 * reverse proxy — the client it names in `X-Forwarded-For`, with the scheme and host it names in
 * `X-Forwarded-Proto` and `X-Forwarded-Host`. Forwarded headers from anyone else are ignored, so a
 * client cannot pick its own address for rate limits and logs.
 */
import * as net from "node:net"
import { Either } from "effect"

/** The parsed `VIBES_TRUSTED_PROXIES`: addresses and networks whose forwarded headers are believed. */
export interface TrustedProxies {
  /** The entries as given, for messages. */
  readonly entries: ReadonlyArray<string>
  readonly list: net.BlockList
}

/** Nobody is trusted: forwarded headers are ignored. */
export const none: TrustedProxies = { entries: [], list: new net.BlockList() }

/** Normalises an IPv4-mapped IPv6 address (`::ffff:127.0.0.1`) to plain IPv4. */
export const normalize = (address: string): string => {
  const lower = address.toLowerCase()
  return lower.startsWith("::ffff:") && net.isIPv4(lower.slice(7)) ? lower.slice(7) : lower
}

const familyOf = (address: string): "ipv4" | "ipv6" | undefined =>
  net.isIPv4(address) ? "ipv4" : net.isIPv6(address) ? "ipv6" : undefined

/**
 * Parses a comma-separated list of addresses and CIDR networks (`10.0.0.0/8`, `::1`,
 * `loopback` for 127.0.0.0/8 and ::1). Fails with the entry that does not parse.
 */
export const parseTrustedProxies = (text: string): Either.Either<TrustedProxies, string> => {
  const list = new net.BlockList()
  const entries = text
    .split(",")
    .map((entry) => entry.trim())
    .filter((entry) => entry !== "")
  for (const entry of entries) {
    if (entry === "loopback") {
      list.addSubnet("127.0.0.0", 8, "ipv4")
      list.addAddress("::1", "ipv6")
      continue
    }
    const [address = "", bits, ...rest] = entry.split("/")
    const family = familyOf(address)
    if (family === undefined || rest.length > 0) {
      return Either.left(`'${entry}' is not an IP address, a CIDR network or 'loopback'`)
    }
    if (bits === undefined) {
      list.addAddress(address, family)
      continue
    }
    const prefix = Number(bits)
    const max = family === "ipv4" ? 32 : 128
    if (!/^\d{1,3}$/.test(bits) || prefix > max) {
      return Either.left(`'${entry}': the prefix length must be 0 to ${max}`)
    }
    list.addSubnet(address, prefix, family)
  }
  return Either.right({ entries, list })
}

/** Whether `address` is one of the trusted proxies. */
export const isTrusted = (trusted: TrustedProxies, address: string): boolean => {
  const normal = normalize(address)
  const family = familyOf(normal)
  return family !== undefined && trusted.list.check(normal, family)
}

/** Where a request comes from, as far as this server can tell. */
export interface Origin {
  /** The client's IP address. */
  readonly address: string
  /** Whether the client reached the first trusted hop over TLS. */
  readonly secure: boolean
  /** The host the client asked for (`Host`, or `X-Forwarded-Host` from a trusted proxy). */
  readonly host: string | undefined
}

type HeaderValue = string | ReadonlyArray<string> | undefined

const first = (value: HeaderValue): string | undefined =>
  typeof value === "string" ? value : value === undefined ? undefined : value[0]

const lastListItem = (value: string | undefined): string | undefined => {
  if (value === undefined) return undefined
  const items = value
    .split(",")
    .map((item) => item.trim())
    .filter((item) => item !== "")
  return items[items.length - 1]
}

/**
 * The request's origin. `remote` is the socket's peer address. Walking `X-Forwarded-For` from the
 * right, every trusted hop is skipped; the first untrusted address is the client.
 */
export const resolve = (
  trusted: TrustedProxies,
  remote: string | undefined,
  headers: Readonly<Record<string, HeaderValue>>
): Origin => {
  const peer = normalize(remote ?? "unknown")
  const host = first(headers["host"])
  if (trusted.entries.length === 0 || !isTrusted(trusted, peer)) {
    return { address: peer, secure: false, host }
  }
  const forwarded = (first(headers["x-forwarded-for"]) ?? "")
    .split(",")
    .map((item) => normalize(item.trim()))
    .filter((item) => item !== "")
  let address = peer
  for (let i = forwarded.length - 1; i >= 0; i--) {
    const hop = forwarded[i] ?? ""
    if (familyOf(hop) === undefined) break
    address = hop
    if (!isTrusted(trusted, hop)) break
  }
  const proto = lastListItem(first(headers["x-forwarded-proto"]))
  const forwardedHost = lastListItem(first(headers["x-forwarded-host"]))
  return { address, secure: proto === "https", host: forwardedHost ?? host }
}

/**
 * The key failed attempts are counted under: the address, or for IPv6 its /64 network (one
 * machine usually holds a whole /64, so counting single addresses would be no limit at all).
 */
export const throttleKey = (address: string): string => {
  if (!net.isIPv6(address)) return address
  const expanded = expandIpv6(address)
  return expanded === undefined ? address : `${expanded.slice(0, 4).join(":")}::/64`
}

const expandIpv6 = (address: string): Array<string> | undefined => {
  const [head = "", tail] = address.split("::")
  const left = head === "" ? [] : head.split(":")
  const right = tail === undefined || tail === "" ? [] : tail.split(":")
  const missing = 8 - left.length - right.length
  if (missing < 0 || (tail === undefined && missing !== 0)) return undefined
  return [...left, ...Array<string>(missing).fill("0"), ...right].map((group) =>
    (group === "" ? "0" : group).toLowerCase()
  )
}
