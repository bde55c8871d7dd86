// The libvirt URI a vircpt command line is going to use, read from argv before the command line
// parser is loaded: bin/vircpt.ts starts the command's virsh shell with it, so that virsh loads
// libvirt and connects while node loads the program (docs/benchmarks.md, "Start-up of vircpt").
// Only a guess: commander decides. A shell started for another URI than the one parsed is closed
// unused (libvirt/virsh-session.ts, takePrestarted).

/** The URI, or undefined when the command will not talk to libvirt (no domain, or help). */
export function earlyUri(argv: readonly string[], fallback: string): string | undefined {
  let uri = fallback;
  let domain = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') break;
    if (a === '-h' || a === '--help' || a === 'help') return undefined;
    if (a === '-U' || a === '--uri') uri = argv[++i] ?? uri;
    else if (a.startsWith('--uri=')) uri = a.slice('--uri='.length);
    else if (/^-U./.test(a)) uri = a.slice(2);
    else if (a === '-d' || a === '--domain') domain = ++i < argv.length;
    else if (a.startsWith('--domain=') || /^-d./.test(a)) domain = true;
  }
  return domain && uri.length > 0 ? uri : undefined;
}
