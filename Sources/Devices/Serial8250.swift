/// A 16550A-compatible UART (the PC's COM1 at ports 0x3F8-0x3FF): enough for Linux's
/// earlyprintk and 8250 driver and for a polling guest. Transmission is instant: the
/// transmitter is always empty (LSR.THRE | LSR.TEMT), each byte written to THR goes to `output`
/// (or, in loopback mode, back to the receiver). Input comes from `receive(_:)`.
///
/// Pure state machine: its interrupt line is a value (`interruptAsserted`) that the VMM drives
/// into the interrupt controller after each access.
public final class Serial8250: BusDevice {
    /// Register offsets from the base port.
    enum Register {
        static let data = 0  // RBR (read) / THR (write); DLL with DLAB
        static let interruptEnable = 1  // IER; DLM with DLAB
        static let interruptIdentification = 2  // IIR (read) / FCR (write)
        static let lineControl = 3
        static let modemControl = 4
        static let lineStatus = 5
        static let modemStatus = 6
        static let scratch = 7
    }

    /// Bytes the receiver holds before input is dropped.
    public static let receiveCapacity = 4096

    private let output: (UInt8) -> Void
    private var receiveBuffer: [UInt8] = []
    private var receiveHead = 0
    private var interruptEnable: UInt8 = 0
    private var lineControl: UInt8 = 0x03  // 8N1
    private var modemControl: UInt8 = 0x08  // OUT2
    private var scratch: UInt8 = 0
    private var divisor: UInt16 = 12  // 9600 baud
    private var fifoEnabled = false
    /// THR-empty interrupt condition: set when the transmitter becomes empty (always right after
    /// a write) or when the guest enables it; cleared by reading IIR while it is the source, or
    /// by writing THR.
    private var transmitterEmptyPending = false

    /// Bytes dropped because the receiver was full.
    public private(set) var droppedInput = 0

    /// `output` receives each byte the guest transmits.
    public init(output: @escaping (UInt8) -> Void) {
        self.output = output
    }

    private var dlab: Bool { lineControl & 0x80 != 0 }
    private var loopback: Bool { modemControl & 0x10 != 0 }
    private var receiveCount: Int { receiveBuffer.count - receiveHead }

    /// Whether the UART asks for an interrupt (IRQ 4 for COM1).
    public var interruptAsserted: Bool { pendingInterrupt != nil }

    /// IIR's interrupt id for the highest-priority pending source, nil for none.
    private var pendingInterrupt: UInt8? {
        if interruptEnable & 0x01 != 0 && receiveCount > 0 { return 0x04 }
        if interruptEnable & 0x02 != 0 && transmitterEmptyPending { return 0x02 }
        return nil
    }

    /// Queues bytes for the guest to read; returns how many fitted.
    @discardableResult
    public func receive(_ bytes: some Sequence<UInt8>) -> Int {
        var accepted = 0
        for byte in bytes {
            if receiveCount >= Serial8250.receiveCapacity {
                droppedInput += 1
                continue
            }
            receiveBuffer.append(byte)
            accepted += 1
        }
        return accepted
    }

    public func read(offset: UInt64, into data: UnsafeMutableRawBufferPointer) {
        // The registers are bytes; a wider access reads the addressed one, the rest all ones.
        data.fillWithOnes()
        guard data.count >= 1, offset < 8 else { return }
        data[0] = readRegister(Int(offset))
    }

    public func write(offset: UInt64, from data: UnsafeRawBufferPointer) {
        guard data.count >= 1, offset < 8 else { return }
        writeRegister(Int(offset), data[0])
    }

    private func readRegister(_ register: Int) -> UInt8 {
        switch register {
        case Register.data:
            if dlab { return UInt8(truncatingIfNeeded: divisor) }
            return takeReceived() ?? 0
        case Register.interruptEnable:
            return dlab ? UInt8(truncatingIfNeeded: divisor >> 8) : interruptEnable
        case Register.interruptIdentification:
            let fifoBits: UInt8 = fifoEnabled ? 0xC0 : 0
            guard let id = pendingInterrupt else { return fifoBits | 0x01 }
            if id == 0x02 { transmitterEmptyPending = false }
            return fifoBits | id
        case Register.lineControl:
            return lineControl
        case Register.modemControl:
            return modemControl
        case Register.lineStatus:
            // THRE | TEMT always: the transmitter never holds a byte. DR when input waits.
            return 0x60 | (receiveCount > 0 ? 0x01 : 0)
        case Register.modemStatus:
            if loopback {
                // Loopback wires DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD.
                let m = modemControl
                return (m & 0x02 != 0 ? 0x10 : 0) | (m & 0x01 != 0 ? 0x20 : 0) | (m & 0x04 != 0 ? 0x40 : 0) | (m & 0x08 != 0 ? 0x80 : 0)
            }
            return 0xB0  // DCD | DSR | CTS: a terminal is always there
        default:
            return scratch
        }
    }

    private func writeRegister(_ register: Int, _ value: UInt8) {
        switch register {
        case Register.data:
            if dlab {
                divisor = (divisor & 0xFF00) | UInt16(value)
                return
            }
            if loopback {
                receive(CollectionOfOne(value))
            } else {
                output(value)
            }
            // Sent at once: the transmitter is empty again.
            transmitterEmptyPending = true
        case Register.interruptEnable:
            if dlab {
                divisor = (divisor & 0x00FF) | UInt16(value) << 8
                return
            }
            let enablingTransmit = interruptEnable & 0x02 == 0 && value & 0x02 != 0
            interruptEnable = value & 0x0F
            // A 16550 raises THRE as soon as the interrupt is enabled with an empty transmitter;
            // Linux's driver starts transmitting on that interrupt.
            if enablingTransmit { transmitterEmptyPending = true }
        case Register.interruptIdentification:
            fifoEnabled = value & 0x01 != 0
            if value & 0x02 != 0 {
                receiveBuffer.removeAll(keepingCapacity: true)
                receiveHead = 0
            }
        case Register.lineControl:
            lineControl = value
        case Register.modemControl:
            modemControl = value & 0x1F
        case Register.lineStatus, Register.modemStatus:
            break  // read-only
        default:
            scratch = value
        }
    }

    private func takeReceived() -> UInt8? {
        guard receiveHead < receiveBuffer.count else { return nil }
        let byte = receiveBuffer[receiveHead]
        receiveHead += 1
        if receiveHead == receiveBuffer.count {
            receiveBuffer.removeAll(keepingCapacity: true)
            receiveHead = 0
        }
        return byte
    }
}
