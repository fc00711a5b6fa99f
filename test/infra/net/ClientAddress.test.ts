import { describe, expect, it } from "@effect/vitest"
import { Either } from "effect"
import * as AllowedHosts from "../../../infra/net/AllowedHosts.js"
import * as ClientAddress from "../../../infra/net/ClientAddress.js"

const trusted = (text: string) => Either.getOrThrow(ClientAddress.parseTrustedProxies(text))

describe("client addresses", () => {
  it("ignores forwarded headers from a peer that is not a trusted proxy", () => {
    const origin = ClientAddress.resolve(ClientAddress.none, "127.0.0.1", {
      host: "localhost:7432",
      "x-forwarded-for": "203.0.113.9",
      "x-forwarded-proto": "https",
      "x-forwarded-host": "evil.example"
    })
    expect(origin).toEqual({ address: "127.0.0.1", secure: false, host: "localhost:7432" })
  })

  it("takes the first untrusted address from the right of X-Forwarded-For behind trusted proxies", () => {
    const proxies = trusted("10.0.0.0/8, loopback")
    const origin = ClientAddress.resolve(proxies, "::ffff:127.0.0.1", {
      host: "internal:7432",
      "x-forwarded-for": "198.51.100.7, 203.0.113.9, 10.1.2.3",
      "x-forwarded-proto": "https",
      "x-forwarded-host": "vibes.example.com"
    })
    expect(origin).toEqual({ address: "203.0.113.9", secure: true, host: "vibes.example.com" })
  })

  it("refuses entries that are not addresses or networks", () => {
    expect(Either.isLeft(ClientAddress.parseTrustedProxies("10.0.0.0/33"))).toBe(true)
    expect(Either.isLeft(ClientAddress.parseTrustedProxies("proxy.example"))).toBe(true)
    expect(Either.isRight(ClientAddress.parseTrustedProxies("::1, 192.168.0.0/16"))).toBe(true)
  })

  it("counts IPv6 clients by their /64", () => {
    expect(ClientAddress.throttleKey("2001:db8:1:2:aaaa::1")).toBe("2001:db8:1:2::/64")
    expect(ClientAddress.throttleKey("2001:db8:1:2:bbbb::9")).toBe("2001:db8:1:2::/64")
    expect(ClientAddress.throttleKey("192.0.2.1")).toBe("192.0.2.1")
  })
})

describe("allowed hosts", () => {
  const loopback = Either.getOrThrow(AllowedHosts.resolve("127.0.0.1", undefined))

  it("answers to the loopback names by default on loopback, with any port", () => {
    for (const host of ["localhost:7432", "127.0.0.1:80", "[::1]:7432", "app.localhost", "LOCALHOST"]) {
      expect(AllowedHosts.allows(loopback, host)).toBe(true)
    }
  })

  it("refuses other names, a missing Host and malformed ones (DNS rebinding)", () => {
    for (const host of [
      undefined,
      "",
      "evil.example",
      "evil.example:7432",
      "127.0.0.1:x",
      "[::1",
      "localhost.evil.example"
    ]) {
      expect(AllowedHosts.allows(loopback, host)).toBe(false)
    }
  })

  it("needs a list when listening beyond loopback, and takes '*' only when asked", () => {
    expect(Either.isLeft(AllowedHosts.resolve("0.0.0.0", undefined))).toBe(true)
    const any = Either.getOrThrow(AllowedHosts.resolve("0.0.0.0", ["*"]))
    expect(AllowedHosts.allows(any, "whatever.example")).toBe(true)
    const list = Either.getOrThrow(AllowedHosts.resolve("0.0.0.0", ["vibes.example.com", "*.corp.example"]))
    expect(AllowedHosts.allows(list, "vibes.example.com:443")).toBe(true)
    expect(AllowedHosts.allows(list, "a.corp.example")).toBe(true)
    expect(AllowedHosts.allows(list, "corp.example")).toBe(false)
    expect(Either.isLeft(AllowedHosts.make(["bad host"]))).toBe(true)
  })
})
