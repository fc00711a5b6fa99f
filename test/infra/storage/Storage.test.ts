import { describe, expect, it } from "@effect/vitest"
import { Either } from "effect"
import * as Storage from "../../../infra/storage/Storage.js"

describe("storage keys", () => {
  it.each([
    ["..", "x"],
    ["acme", "../other/x"],
    ["acme", "a/../../b"],
    ["acme", "a/./b"],
    ["acme", "/etc/passwd"],
    ["acme", "a//b"],
    ["acme", "a/"],
    ["acme", ""],
    ["acme", "a\u0000b"],
    ["acme", "a\nb"],
    ["acme", "a\\..\\b"],
    ["acme", "%2e%2e/x"],
    ["acme", "a%2Fb"],
    ["acme", "\uD800x"],
    ["acme", "x".repeat(1000)],
    ["", "x"],
    ["a/b", "x"],
    ["acme/..", "x"],
    ["-acme", "x"]
  ])("refuses tenant %j with path %j", (tenant, path) => {
    const made = Storage.key(tenant, path)
    expect(Either.isLeft(made)).toBe(true)
    if (Either.isLeft(made)) expect(made.left._tag).toBe("InvalidKey")
  })

  it("keeps a valid path under its tenant", () => {
    expect(Storage.key("acme", "jobs/0193/dist/app v1.2 (ü).tar.gz")).toEqual(
      Either.right("acme/jobs/0193/dist/app v1.2 (ü).tar.gz")
    )
    expect(Storage.key("acme", "100%done")).toEqual(Either.right("acme/100%done"))
  })

  it("takes prefixes that end part-way through a segment or at a '/', but never at '..'", () => {
    expect(Storage.prefix("acme", "")).toEqual(Either.right("acme/"))
    expect(Storage.prefix("acme", "jobs/01")).toEqual(Either.right("acme/jobs/01"))
    expect(Storage.prefix("acme", "jobs/")).toEqual(Either.right("acme/jobs/"))
    expect(Either.isLeft(Storage.prefix("acme", "jobs/.."))).toBe(true)
    expect(Either.isLeft(Storage.prefix("acme", "../"))).toBe(true)
    expect(Either.isLeft(Storage.prefix("acme", "/"))).toBe(true)
  })
})
