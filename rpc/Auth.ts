/**
 * Authentication contracts shared by the server and every client.
 */
import { Context, Schema } from "effect"
import * as RpcMiddleware from "@effect/rpc/RpcMiddleware"

/** The request carried no credentials, or credentials that do not match. */
export class Unauthorized extends Schema.TaggedError<Unauthorized>()("Unauthorized", {
  message: Schema.String
}) {}

/** Who a request is acting as, once authenticated. */
export class Principal extends Context.Tag("vibes/Principal")<
  Principal,
  { readonly kind: "admin"; readonly via: "header" | "cookie" }
>() {}

/**
 * Checks every RPC: the admin token as `authorization: Bearer <token>` (per message or on the
 * WebSocket upgrade), or the `vibes_token` cookie a browser got from `/login`.
 */
export class AuthMiddleware extends RpcMiddleware.Tag<AuthMiddleware>()("vibes/AuthMiddleware", {
  provides: Principal,
  failure: Unauthorized,
  requiredForClient: true
}) {}

/** Name of the cookie that `/login` sets for browsers. */
export const cookieName = "vibes_token"
