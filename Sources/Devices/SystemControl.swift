/// The machine's reset and power-off paths, as two small port devices that report to the VMM:
/// - an i8042 keyboard controller (ports 0x60 data and 0x64 status/command) with no keyboard
///   behind it, whose command 0xFE pulses the reset line (Linux's `reboot=k`, the default when
///   there is no ACPI);
/// - the power-management control register at port 0x604 (q35's ACPI PM1a control block): a
///   16-bit write with SLP_EN (bit 13) set and SLP_TYP (bits 10-12) 0 powers off, so one guest
///   powers off both under Bulkhead and under QEMU.
public final class SystemControl {
    /// What the guest asked the machine to do.
    public enum Event: Equatable, Sendable {
        case powerOff
        case reset
    }

    /// First port of the keyboard controller range (0x60 data, 0x64 status/command).
    public static let keyboardControllerPort: UInt16 = 0x60
    /// Length of that range: 0x60-0x64.
    public static let keyboardControllerLength: UInt64 = 5
    /// The PM1a control register.
    public static let powerControlPort: UInt16 = 0x604
    public static let powerControlLength: UInt64 = 2

    /// Attach at `keyboardControllerPort`, `keyboardControllerLength`.
    public let keyboardController: KeyboardController
    /// Attach at `powerControlPort`, `powerControlLength`.
    public let powerControl: PowerControl

    /// `onEvent` runs on the accessing vCPU's thread, under the bus lock.
    public init(onEvent: @escaping (Event) -> Void) {
        keyboardController = KeyboardController(onEvent: onEvent)
        powerControl = PowerControl(onEvent: onEvent)
    }

    /// An i8042 without devices: answers the controller commands firmware and Linux use
    /// (read/write the command byte, self tests), and resets on 0xFE (or on an output-port write
    /// that clears the reset bit).
    public final class KeyboardController: BusDevice {
        private let onEvent: (Event) -> Void
        private var commandByte: UInt8 = 0x30  // both ports' clocks disabled, no interrupts
        private var outputBuffer: UInt8?
        /// The controller command whose data byte the next write to port 0x60 is.
        private var awaitingData: UInt8?

        init(onEvent: @escaping (Event) -> Void) { self.onEvent = onEvent }

        public func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
            data.fillWithOnes()
            guard data.count == 1 else { return }
            switch offset {
            case 0:
                data[0] = outputBuffer ?? 0
                outputBuffer = nil
            case 4:
                // OBF when a byte waits; SYS (passed self test); input buffer always empty.
                data[0] = (outputBuffer != nil ? 0x01 : 0) | 0x04
            default:
                break
            }
        }

        public func write(offset: UInt64, from data: UnsafeRawBufferPointer) {
            guard data.count == 1 else { return }
            let value = data[0]
            switch offset {
            case 0:
                switch awaitingData.take() {
                case 0x60: commandByte = value
                case 0xD1: if value & 0x01 == 0 { onEvent(.reset) }  // output port: bit 0 is the reset line (active low)
                default: break  // no keyboard to take it
                }
            case 4:
                command(value)
            default:
                break
            }
        }

        private func command(_ value: UInt8) {
            switch value {
            case 0x20: outputBuffer = commandByte
            case 0x60, 0xD1: awaitingData = value
            case 0xA7: commandByte |= 0x20  // disable the auxiliary port
            case 0xA8: commandByte &= ~0x20
            case 0xAA: outputBuffer = 0x55  // controller self test passed
            case 0xAB, 0xA9: outputBuffer = 0x00  // port tests passed
            case 0xAD: commandByte |= 0x10  // disable the keyboard port
            case 0xAE: commandByte &= ~0x10
            case 0xFE: onEvent(.reset)
            default: break
            }
        }
    }

    /// The PM1a control register: keeps what the guest writes (SLP_EN reads back as 0) and
    /// powers off on SLP_EN with sleep type 0 (S5 on q35).
    public final class PowerControl: BusDevice {
        private let onEvent: (Event) -> Void
        private var value: UInt16 = 0

        init(onEvent: @escaping (Event) -> Void) { self.onEvent = onEvent }

        public func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
            data.fillWithOnes()
            guard offset == 0, data.count == 2 else { return }
            data.storeLittleEndian(UInt64(value))
        }

        public func write(offset: UInt64, from data: UnsafeRawBufferPointer) {
            guard offset == 0, data.count == 2 else { return }
            let written = UInt16(truncatingIfNeeded: UnsafeRawBufferPointer(data).littleEndianValue)
            value = written & ~0x2000
            if written & 0x2000 != 0 && (written >> 10) & 0x7 == 0 { onEvent(.powerOff) }
        }
    }
}
