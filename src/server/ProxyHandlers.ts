/**
 * Handlers of the `Proxy` RPC group: the providers of this node's proxy, and its statistics.
 */
import { Effect } from "effect"
import { ProxyRpcs } from "../../rpc/Proxy.js"
import { Proxy } from "../../actors/proxy/Proxy.js"

/** `Proxy.Providers` and `Proxy.Stats`, answered from this node's proxy. */
export const layer = ProxyRpcs.toLayer(
  Effect.map(Proxy, (proxy) => ({
    "Proxy.Providers": () => proxy.providers,
    "Proxy.Stats": () => proxy.stats
  }))
)
