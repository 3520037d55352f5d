/** Where each file of a data directory is. A module of its own, light, for the command line (node/client.ts). */
import path from 'node:path'

export interface SitePaths {
  dir: string
  key: string
  mesh: string
  invites: string
  reports: string
  store: string
  replicas: string
  socket: string
}

export function sitePaths(dir: string): SitePaths {
  return {
    dir,
    key: path.join(dir, 'site.key'),
    mesh: path.join(dir, 'mesh.json'),
    invites: path.join(dir, 'invites.json'),
    reports: path.join(dir, 'reports.json'),
    store: path.join(dir, 'store'),
    replicas: path.join(dir, 'replicas'),
    socket: path.join(dir, 'node.sock')
  }
}
