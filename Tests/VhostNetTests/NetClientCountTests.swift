import Foundation
import HostOS
import NetClient
import VhostNet
import VhostUser
import Virtio
import XCTest

/// `NetClient.countReceived`, NetLoad's receive side: frames and bytes counted without copies,
/// mergeable frames counted once, buffers reposted so the ring never runs dry.
final class NetClientCountTests: XCTestCase {
    func testCountReceivedCountsMergedFramesOnceAndRepostsBuffers() throws {
        let port = try ServedPort()
        defer { port.stop() }
        let client = try NetClient(socket: port.socket, queueSize: 64, receiveBufferBytes: 2048)
        XCTAssertTrue(client.mergeable)
        client.postReceiveBuffers()
        var merge = 0
        var frames = 0, bytes = 0
        // 10 rounds of 8 frames (two of them 5 buffers each): 160 buffers through a 64-entry ring.
        for round in 0..<10 {
            for i in 0..<8 {
                let length = i % 4 == 3 ? 9014 : 60 + i
                let frame = Frames.ethernet(length: length, seed: round * 8 + i)
                XCTAssertTrue(Frames.withHeader(frame).withUnsafeBytes { port.pair.deliver($0) }, "round \(round) frame \(i)")
            }
            port.pair.flush()
            let got = client.countReceived(mergeRemaining: &merge)
            frames += got.frames
            bytes += got.bytes
            XCTAssertEqual(merge, 0)
        }
        XCTAssertEqual(frames, 80)
        XCTAssertEqual(UInt64(frames), port.pair.counters.deliveredFrames)
        XCTAssertEqual(UInt64(bytes), port.pair.counters.deliveredBytes)
        XCTAssertEqual(port.pair.counters.rxNoBuffers, 0)
    }
}
