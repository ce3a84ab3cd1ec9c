import Devices
import XCTest

/// The serial port and system-control models in memory.
final class DeviceModelTests: XCTestCase {
    private func read(_ device: BusDevice, _ offset: UInt64, size: Int = 1) -> UInt64 {
        var bytes = [UInt8](repeating: 0, count: size)
        bytes.withUnsafeMutableBytes { device.read(offset: offset, into: $0) }
        return bytes.withUnsafeBytes { $0.littleEndianValue }
    }

    private func write(_ device: BusDevice, _ offset: UInt64, _ value: UInt64, size: Int = 1) {
        var bytes = [UInt8](repeating: 0, count: size)
        bytes.withUnsafeMutableBytes { $0.storeLittleEndian(value) }
        bytes.withUnsafeBytes { device.write(offset: offset, from: $0) }
    }

    func testSerialTransmitsAndAlwaysReportsAnEmptyTransmitter() {
        var out: [UInt8] = []
        let uart = Serial8250 { out.append($0) }
        XCTAssertEqual(read(uart, 5) & 0x60, 0x60, "THRE | TEMT")
        write(uart, 0, 0x41)
        write(uart, 0, 0x42)
        XCTAssertEqual(out, [0x41, 0x42])
        // DLAB: divisor latch instead of THR/IER; nothing transmitted.
        write(uart, 3, 0x83)
        write(uart, 0, 0x01)
        write(uart, 1, 0x00)
        XCTAssertEqual(read(uart, 0), 0x01)
        XCTAssertEqual(read(uart, 3), 0x83)
        write(uart, 3, 0x03)
        XCTAssertEqual(out, [0x41, 0x42])
        write(uart, 7, 0x5A)
        XCTAssertEqual(read(uart, 7), 0x5A, "scratch")
        XCTAssertEqual(read(uart, 2) & 0x0F, 0x01, "no interrupt pending")
        XCTAssertEqual(read(uart, 0, size: 2), 0xFF00, "a 2-byte read gets the register and all ones")
    }

    func testSerialInterruptsAndLoopbackAsLinuxProbesThem() {
        var out: [UInt8] = []
        let uart = Serial8250 { out.append($0) }
        // Enabling THRI with an empty transmitter raises it; reading IIR clears it.
        write(uart, 1, 0x02)
        XCTAssertTrue(uart.interruptAsserted)
        XCTAssertEqual(read(uart, 2) & 0x0F, 0x02)
        XCTAssertFalse(uart.interruptAsserted)
        write(uart, 0, 0x31)
        XCTAssertTrue(uart.interruptAsserted, "the byte went out: empty again")
        write(uart, 1, 0x00)
        XCTAssertFalse(uart.interruptAsserted)
        // Received data: DR and, with RDI enabled, an interrupt until read.
        write(uart, 1, 0x01)
        XCTAssertEqual(uart.receive([0x61, 0x62]), 2)
        XCTAssertTrue(uart.interruptAsserted)
        XCTAssertEqual(read(uart, 2) & 0x0F, 0x04)
        XCTAssertEqual(read(uart, 5) & 0x01, 0x01)
        XCTAssertEqual(read(uart, 0), 0x61)
        XCTAssertEqual(read(uart, 0), 0x62)
        XCTAssertFalse(uart.interruptAsserted)
        XCTAssertEqual(read(uart, 5) & 0x01, 0x00)
        // Loopback (Linux's 8250 probe): MCR outputs come back on MSR, THR comes back on RBR.
        write(uart, 4, 0x1A)
        XCTAssertEqual(read(uart, 6) & 0xF0, 0x90)
        write(uart, 0, 0x77)
        XCTAssertEqual(read(uart, 0), 0x77)
        XCTAssertEqual(out, [0x31], "loopback bytes do not reach the console")
        write(uart, 4, 0x0B)
        XCTAssertEqual(read(uart, 6) & 0xF0, 0xB0)
        // FIFO enabled shows in IIR.
        write(uart, 2, 0x07)
        XCTAssertEqual(read(uart, 2) & 0xC0, 0xC0)
        // A full receiver drops what does not fit.
        XCTAssertEqual(uart.receive([UInt8](repeating: 1, count: Serial8250.receiveCapacity + 10)), Serial8250.receiveCapacity)
        XCTAssertEqual(uart.droppedInput, 10)
    }

    func testSystemControlResetsAndPowersOff() {
        var events: [SystemControl.Event] = []
        let control = SystemControl { events.append($0) }
        let i8042 = control.keyboardController
        XCTAssertEqual(read(i8042, 4) & 0x01, 0, "nothing to read")
        write(i8042, 4, 0xAA)
        XCTAssertEqual(read(i8042, 4) & 0x01, 1)
        XCTAssertEqual(read(i8042, 0), 0x55, "self test passed")
        write(i8042, 4, 0x60)
        write(i8042, 0, 0x47)
        write(i8042, 4, 0x20)
        XCTAssertEqual(read(i8042, 0), 0x47, "command byte written and read back")
        XCTAssertEqual(events, [])
        write(i8042, 4, 0xFE)
        XCTAssertEqual(events, [.reset])
        write(i8042, 4, 0xD1)
        write(i8042, 0, 0xFE)
        XCTAssertEqual(events, [.reset, .reset], "output port with the reset line low")

        let power = control.powerControl
        write(power, 0, 0x2000 | (5 << 10), size: 2)
        XCTAssertEqual(events.count, 2, "SLP_TYP 5 is not the power-off sleep type here")
        write(power, 0, 0x2000, size: 1)
        write(power, 0, 0x2000, size: 4)
        XCTAssertEqual(events.count, 2, "only 16-bit writes")
        write(power, 0, 0x0001, size: 2)
        XCTAssertEqual(read(power, 0, size: 2), 0x0001)
        write(power, 0, 0x2000, size: 2)
        XCTAssertEqual(events, [.reset, .reset, .powerOff])
    }
}
