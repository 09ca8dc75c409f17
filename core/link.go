package core

// AckShare is the share of a download's rate that its TCP acknowledgements
// take on the receiver's uplink: one 66-byte ACK per two 1,514-byte
// segments, 2.2 %, rounded.
const AckShare = 0.02

// UsableUplink is how many of a host's up bytes/s its uploads may take
// while it downloads at up to down bytes/s: all of them, unless the
// download's acknowledgements would need more than a tenth of the uplink
// (a downlink over 5 times the uplink); then up less those ACKs. Such a
// host that fills its uplink with uploads queues its own ACKs behind them
// in the uplink's buffer, and its download collapses: on a 2.5 Mbit/s
// uplink with a 25 Mbit/s downlink, an unpaced upload took the download
// from 24 to 3–6 Mbit/s; paced at 50–80 % of the uplink it stayed at 24
// (docs/architecture.md, "Asymmetric links"). 0 or negative inputs: up.
func UsableUplink(up, down int64) int64 {
	if up <= 0 || down <= 0 {
		return up
	}
	ack := int64(float64(down) * AckShare)
	if ack*10 <= up {
		return up
	}
	return max(up-ack, up/4)
}
