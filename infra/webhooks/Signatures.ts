/**
 * Webhook signatures, both ways: Standard Webhooks (`webhook-id`, `webhook-timestamp`,
 * `webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`) for what vibes
 * sends and for generic inbound hooks; GitHub's `X-Hub-Signature-256` and Slack's `v0` signing
 * secret for inbound ones. Every comparison is constant-time.
 */
import * as crypto from "node:crypto"

/** The prefix of a Standard Webhooks secret. */
const secretPrefix = "whsec_"

/** A new Standard Webhooks secret: `whsec_` and 32 random bytes in base64. */
export const newSecret = (): string => secretPrefix + crypto.randomBytes(32).toString("base64")

/** The HMAC key of a secret: the bytes after `whsec_` when it is one, else the text's own bytes. */
export const keyOf = (secret: string): Buffer =>
  secret.startsWith(secretPrefix)
    ? Buffer.from(secret.slice(secretPrefix.length), "base64")
    : Buffer.from(secret, "utf8")

const hmac = (key: Buffer | string, content: Buffer | string, encoding: "base64" | "hex") =>
  crypto.createHmac("sha256", key).update(content).digest(encoding)

/** Equal strings, compared in constant time (for strings of the same length). */
export const safeEqual = (a: string, b: string): boolean => {
  const left = Buffer.from(a)
  const right = Buffer.from(b)
  return left.length === right.length && crypto.timingSafeEqual(left, right)
}

/** The headers of a signed delivery. */
export interface SignedHeaders {
  readonly "webhook-id": string
  readonly "webhook-timestamp": string
  readonly "webhook-signature": string
}

/** Signs `body` as Standard Webhooks does, for delivery `id` at `timestampSeconds`. */
export const sign = (secret: string, id: string, timestampSeconds: number, body: string): SignedHeaders => ({
  "webhook-id": id,
  "webhook-timestamp": String(timestampSeconds),
  "webhook-signature": `v1,${hmac(keyOf(secret), `${id}.${timestampSeconds}.${body}`, "base64")}`
})

/** Why an inbound request was not accepted as signed. */
export type Refusal = "missing" | "mismatch" | "stale"

/** How far a signed timestamp may be from now: five minutes, as Slack and Standard Webhooks say. */
export const toleranceSeconds = 5 * 60

const within = (timestamp: string, nowSeconds: number): boolean => {
  if (!/^[0-9]{1,12}$/.test(timestamp)) return false
  return Math.abs(nowSeconds - Number(timestamp)) <= toleranceSeconds
}

type Headers = Readonly<Record<string, string | ReadonlyArray<string> | undefined>>

const header = (headers: Headers, name: string): string | undefined => {
  const value = headers[name]
  return typeof value === "string" ? value : undefined
}

/** A verified request's delivery id (for de-duplication), or why it is refused. */
export type Verdict =
  | { readonly _tag: "Verified"; readonly deliveryId: string }
  | { readonly _tag: "Refused"; readonly reason: Refusal }

const refused = (reason: Refusal): Verdict => ({ _tag: "Refused", reason })

/**
 * Standard Webhooks: the timestamp within the tolerance, and one of the space-separated `v1,`
 * signatures matching. The delivery id is `webhook-id`.
 */
export const verifyStandard = (
  secret: string,
  headers: Headers,
  body: Buffer,
  nowSeconds: number
): Verdict => {
  const id = header(headers, "webhook-id")
  const timestamp = header(headers, "webhook-timestamp")
  const signatures = header(headers, "webhook-signature")
  if (id === undefined || timestamp === undefined || signatures === undefined || id.length > 200)
    return refused("missing")
  const expected = `v1,${hmac(keyOf(secret), Buffer.concat([Buffer.from(`${id}.${timestamp}.`), body]), "base64")}`
  const matches = signatures.split(" ").some((candidate) => safeEqual(candidate, expected))
  if (!matches) return refused("mismatch")
  return within(timestamp, nowSeconds) ? { _tag: "Verified", deliveryId: id } : refused("stale")
}

/**
 * GitHub: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>`. GitHub signs no
 * timestamp: replays are caught by the delivery id (`X-GitHub-Delivery`) alone.
 */
export const verifyGitHub = (secret: string, headers: Headers, body: Buffer): Verdict => {
  const signature = header(headers, "x-hub-signature-256")
  const delivery = header(headers, "x-github-delivery")
  if (signature === undefined) return refused("missing")
  if (!safeEqual(signature, `sha256=${hmac(Buffer.from(secret, "utf8"), body, "hex")}`))
    return refused("mismatch")
  // Without a delivery id, the signature itself identifies the request.
  return { _tag: "Verified", deliveryId: delivery?.slice(0, 200) ?? `sig:${signature.slice(7, 71)}` }
}

/**
 * Slack: `X-Slack-Signature: v0=<hex HMAC-SHA256(signing secret, "v0:<timestamp>:<body>")>` with
 * `X-Slack-Request-Timestamp` within five minutes. Slash commands carry no delivery id: the
 * signature identifies the request.
 */
export const verifySlack = (secret: string, headers: Headers, body: Buffer, nowSeconds: number): Verdict => {
  const signature = header(headers, "x-slack-signature")
  const timestamp = header(headers, "x-slack-request-timestamp")
  if (signature === undefined || timestamp === undefined) return refused("missing")
  const expected = `v0=${hmac(Buffer.from(secret, "utf8"), Buffer.concat([Buffer.from(`v0:${timestamp}:`), body]), "hex")}`
  if (!safeEqual(signature, expected)) return refused("mismatch")
  return within(timestamp, nowSeconds)
    ? { _tag: "Verified", deliveryId: `slack:${timestamp}:${signature.slice(3, 67)}` }
    : refused("stale")
}
