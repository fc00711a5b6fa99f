/**
 * Finds the admin token a request carries (bearer header or login cookie) and checks it.
 */
import { Effect, Layer, Option } from "effect"
import * as Headers from "@effect/platform/Headers"
import { AuthMiddleware, cookieName, Unauthorized } from "../../rpc/Auth.js"
import { AdminToken } from "./AdminToken.js"

/** A token found in a request, and where it was found. */
export interface Presented {
  readonly token: string
  readonly via: "header" | "cookie"
}

/** Reads a cookie out of a `Cookie` header value. */
export const cookieValue = (header: string | undefined, name: string): Option.Option<string> => {
  if (header === undefined) return Option.none()
  for (const part of header.split(";")) {
    const eq = part.indexOf("=")
    if (eq > 0 && part.slice(0, eq).trim() === name) {
      const raw = part.slice(eq + 1).trim()
      try {
        return Option.some(decodeURIComponent(raw))
      } catch {
        return Option.some(raw)
      }
    }
  }
  return Option.none()
}

/** The bearer token, else the `vibes_token` cookie. The last `authorization` header wins. */
export const presented = (headers: Headers.Headers): Option.Option<Presented> => {
  const authorization = Headers.get(headers, "authorization")
  if (Option.isSome(authorization)) {
    const match = /^Bearer\s+(\S+)\s*$/i.exec(authorization.value)
    return match?.[1] !== undefined ? Option.some({ token: match[1], via: "header" }) : Option.none()
  }
  return Option.map(
    cookieValue(Option.getOrUndefined(Headers.get(headers, "cookie")), cookieName),
    (token) => ({
      token,
      via: "cookie" as const
    })
  )
}

/** Checks the headers against the admin token. */
export const check = (
  headers: Headers.Headers
): Effect.Effect<{ readonly kind: "admin"; readonly via: "header" | "cookie" }, Unauthorized, AdminToken> =>
  Effect.flatMap(AdminToken, (admin) =>
    Option.match(presented(headers), {
      onNone: () =>
        Effect.fail(
          new Unauthorized({
            message: "no credentials: send 'authorization: Bearer <token>' or log in at /login"
          })
        ),
      onSome: ({ token, via }) =>
        admin.verify(token)
          ? Effect.succeed({ kind: "admin" as const, via })
          : Effect.fail(new Unauthorized({ message: "the token is not valid for this server" }))
    })
  )

/** The server side of `AuthMiddleware`: every RPC is checked before its handler runs. */
export const layerRpc: Layer.Layer<AuthMiddleware, never, AdminToken> = Layer.effect(
  AuthMiddleware,
  Effect.map(AdminToken, (admin) =>
    AuthMiddleware.of(({ headers }) => check(headers).pipe(Effect.provideService(AdminToken, admin)))
  )
)
