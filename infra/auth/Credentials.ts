/**
 * One place where every credential is checked: the admin token (`authorization: Bearer`, or the
 * `vibes.token.` subprotocol of a WebSocket upgrade) and the browser's login cookie. Each check is
 * throttled per client address (see `Throttle`): an address that failed too often is refused
 * unchecked until its lockout ends. Refusals are logged and recorded as `auth.login_failed`
 * events with the client's address; the credentials themselves never are.
 */
import { Context, Effect, Layer, Option, Runtime } from "effect"
import {
  type CredentialKind,
  cookieName,
  type Identity,
  TooManyAttempts,
  tokenProtocolPrefix,
  Unauthorized
} from "../../rpc/Auth.js"
import { newEvent } from "../../rpc/Events.js"
import { EventLog } from "../eventlog/EventLog.js"
import * as ClientAddress from "../net/ClientAddress.js"
import { AdminToken } from "./AdminToken.js"
import { type Login, Logins } from "./Logins.js"
import * as Throttle from "./Throttle.js"

/** A credential found in a request, and where. */
export interface Presented {
  readonly value: string
  readonly via: CredentialKind
}

type HeaderValue = string | ReadonlyArray<string> | undefined

/** Request headers as Node and `@effect/platform` give them. */
export type RequestHeaders = Readonly<Record<string, HeaderValue>>

const first = (value: HeaderValue): string | undefined =>
  typeof value === "string" ? value : value === undefined ? undefined : value[0]

/** Reads a cookie out of a `Cookie` header value. */
export const cookieValue = (header: string | undefined, name: string): Option.Option<string> => {
  if (header === undefined) return Option.none()
  for (const part of header.split(";")) {
    const eq = part.indexOf("=")
    if (eq > 0 && part.slice(0, eq).trim() === name) return Option.some(part.slice(eq + 1).trim())
  }
  return Option.none()
}

/** The token in a `vibes.token.<base64url>` subprotocol, if one is offered. */
export const protocolToken = (header: string | undefined): Option.Option<string> => {
  if (header === undefined) return Option.none()
  for (const item of header.split(",")) {
    const protocol = item.trim()
    if (protocol.startsWith(tokenProtocolPrefix)) {
      const encoded = protocol.slice(tokenProtocolPrefix.length)
      if (!/^[A-Za-z0-9_-]{1,1024}$/.test(encoded)) return Option.none()
      return Option.some(Buffer.from(encoded, "base64url").toString("utf8"))
    }
  }
  return Option.none()
}

/**
 * The credential a request presents: the bearer header, else a token subprotocol, else the login
 * cookie. A malformed `authorization` header counts as a wrong credential, not as none.
 */
export const presented = (headers: RequestHeaders): Option.Option<Presented> => {
  const authorization = first(headers["authorization"])
  if (authorization !== undefined) {
    const match = /^Bearer\s+(\S+)\s*$/i.exec(authorization)
    return Option.some({ value: match?.[1] ?? "", via: "header" })
  }
  const token = protocolToken(first(headers["sec-websocket-protocol"]))
  if (Option.isSome(token)) return Option.some({ value: token.value, via: "protocol" })
  return Option.map(cookieValue(first(headers["cookie"]), cookieName), (value) => ({ value, via: "cookie" }))
}

/** Checks credentials; the same instance serves the Effect routes, the upgrade and the proxy. */
export class Authenticator extends Context.Tag("vibes/Authenticator")<
  Authenticator,
  {
    /** Who the request is, or why not. Refusals count against the client's address. */
    readonly authenticate: (
      headers: RequestHeaders,
      origin: ClientAddress.Origin
    ) => Effect.Effect<Identity, Unauthorized | TooManyAttempts>
    /** For callers outside Effect (the proxy): milliseconds `address` must still wait. */
    readonly lockedFor: (address: string) => number
    /** For callers outside Effect: records a refused credential from `address`. */
    readonly refused: (address: string, via: string) => void
    /** For callers outside Effect: records an accepted credential from `address`. */
    readonly accepted: (address: string) => void
  }
>() {}

/** Options of the authenticator. */
export interface Options {
  readonly nodeId: string
  readonly throttle?: Throttle.Options
}

const missing = () =>
  new Unauthorized({
    message: "no credentials: send 'authorization: Bearer <token>' or log in at /login"
  })

const tooMany = (millis: number) => {
  const seconds = Math.max(1, Math.ceil(millis / 1000))
  return new TooManyAttempts({
    retryAfterSeconds: seconds,
    message: `too many refused credentials from this address; try again in ${seconds} s`
  })
}

/** The authenticator of a node. */
export const make = (options: Options) =>
  Effect.gen(function* () {
    const admin = yield* AdminToken
    const logins = yield* Logins
    const log = yield* EventLog
    const throttle = Throttle.make(options.throttle)
    const runtime = yield* Effect.runtime<never>()
    const runFork = Runtime.runFork(runtime)
    const source = { nodeId: options.nodeId, component: "auth" }

    const refused = (address: string, via: string) => {
      const outcome = throttle.failure(ClientAddress.throttleKey(address), Date.now())
      const data = {
        clientAddress: address,
        via,
        failures: outcome.failures,
        lockedForMillis: outcome.lockedForMillis,
        refusedWhileLocked: outcome.refusedWhileLocked
      }
      runFork(
        Effect.zipRight(
          Effect.logWarning("refused credentials").pipe(Effect.annotateLogs(data)),
          log
            .append([newEvent("auth.login_failed", data, { source, severity: "warn" })])
            .pipe(
              Effect.catchAll((error) =>
                Effect.logWarning(`could not record auth.login_failed: ${error.message}`)
              )
            )
        )
      )
    }

    const lockedFor = (address: string) => throttle.lockedFor(ClientAddress.throttleKey(address), Date.now())
    const accepted = (address: string) => throttle.success(ClientAddress.throttleKey(address))

    const authenticate = (headers: RequestHeaders, origin: ClientAddress.Origin) =>
      Effect.suspend((): Effect.Effect<Identity, Unauthorized | TooManyAttempts> => {
        const wait = lockedFor(origin.address)
        if (wait > 0) return Effect.fail(tooMany(wait))
        const credential = presented(headers)
        if (Option.isNone(credential)) return Effect.fail(missing())
        const { value, via } = credential.value
        const identity = (login: string | null): Identity => ({
          kind: "admin",
          via,
          login,
          clientAddress: origin.address
        })
        if (via === "cookie") {
          return logins.verify(value).pipe(
            Effect.catchAll((error) =>
              Effect.zipRight(Effect.logWarning(error.message), Effect.succeed(Option.none<Login>()))
            ),
            Effect.flatMap(
              Option.match({
                onNone: () => {
                  refused(origin.address, via)
                  return Effect.fail(
                    new Unauthorized({
                      message: "the login has expired or was revoked; log in again at /login"
                    })
                  )
                },
                onSome: (login) => {
                  accepted(origin.address)
                  return Effect.succeed(identity(login.ref))
                }
              })
            )
          )
        }
        if (admin.verify(value)) {
          accepted(origin.address)
          return Effect.succeed(identity(null))
        }
        refused(origin.address, via)
        return Effect.fail(new Unauthorized({ message: "the token is not valid for this server" }))
      })

    return Authenticator.of({ authenticate, lockedFor, refused, accepted })
  })

/** The authenticator, on the node's admin token, login store and event log. */
export const layer = (options: Options): Layer.Layer<Authenticator, never, AdminToken | Logins | EventLog> =>
  Layer.effect(Authenticator, make(options))
