// Exit codes of vircpt and vircptfs, in one place (README "Exit codes"; the mount(8) helper turns
// them into mount(8)'s own: usage -> 1, anything else failed -> 32), and the default libvirt URI
// both programs share. No dependencies: vircptfs loads this without commander.

export const EXIT_OK = 0;
/** The operation failed: one line naming the domain, checkpoint or disk, and libvirt's words. */
export const EXIT_FAILED = 1;
/** A usage error: bad arguments or options, nothing was done. */
export const EXIT_USAGE = 2;
/** A second SIGINT/SIGTERM: vircpt leaves at once (128 + SIGINT, as shells report it). */
export const EXIT_INTERRUPTED = 130;

/** `-U` / SOURCE 'default': the system daemon for root, the user's session daemon otherwise. */
export function defaultUri(): string {
  return process.getuid?.() === 0 ? 'qemu:///system' : 'qemu:///session';
}
