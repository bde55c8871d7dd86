// A logger that writes nothing, for tests that hand the product a logger they do not read.
import { pino, type Logger } from 'pino';

export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
