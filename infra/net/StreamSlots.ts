/**
 * Long-lived connections per client address (RPC sockets, event and log streams, proxy requests): each takes a
 * slot while it is open, and a client that holds its limit gets no more until one closes. One
 * client cannot hold the node's memory and file descriptors with idle streams.
 */

/** The slots of one node. */
export interface StreamSlots {
  readonly limit: number
  /** Takes a slot for `address`; the release function when there was one free, else undefined. */
  readonly take: (address: string) => (() => void) | undefined
  /** Slots held by `address` now. */
  readonly held: (address: string) => number
}

/** Slots with at most `limit` per address. */
export const make = (limit: number): StreamSlots => {
  const counts = new Map<string, number>()
  return {
    limit,
    take: (address) => {
      const held = counts.get(address) ?? 0
      if (held >= limit) return undefined
      counts.set(address, held + 1)
      let released = false
      return () => {
        if (released) return
        released = true
        const now = (counts.get(address) ?? 1) - 1
        if (now <= 0) counts.delete(address)
        else counts.set(address, now)
      }
    },
    held: (address) => counts.get(address) ?? 0
  }
}
