package dbusscenario

import (
	"regexp"
	"strconv"
	"strings"
)

var (
	reTime      = regexp.MustCompile(` ?time=[0-9]+\.[0-9]+`)
	reTimestamp = regexp.MustCompile(` *Timestamp="[^"]*"`)
	reGUID      = regexp.MustCompile(`guid=[0-9a-f]{32}`)
	reUnique    = regexp.MustCompile(`:[0-9]+\.[0-9]+`)
	reSerial    = regexp.MustCompile(`\b(serial|reply_serial|Cookie|ReplyCookie)=([0-9]+)`)
	reBusSerial = regexp.MustCompile(`\b(serial|Cookie)=-?[0-9]+`)
)

// Normalize makes a transcript comparable between buses: it drops
// timestamps and GUIDs, writes the unique names in labels as ":LABEL"
// and the others as ":U1", ":U2"… in order of appearance, the serials the
// bus itself chose (messages whose sender is org.freedesktop.DBus) as
// "BUS" and every other serial as "S1", "S2"… in order of appearance (a
// reply_serial names the same placeholder as the serial it answers).
func Normalize(text string, labels map[string]string) string {
	uniques := map[string]string{}
	serials := map[string]string{}
	lines := strings.Split(text, "\n")
	for i, l := range lines {
		l = reTime.ReplaceAllString(l, "")
		l = reTimestamp.ReplaceAllString(l, "")
		l = reGUID.ReplaceAllString(l, "guid=*")
		if strings.Contains(l, "sender=org.freedesktop.DBus ") {
			l = reBusSerial.ReplaceAllString(l, "${1}=BUS")
		}
		l = reUnique.ReplaceAllStringFunc(l, func(u string) string {
			if label, ok := labels[u]; ok {
				return ":" + label
			}
			if _, ok := uniques[u]; !ok {
				uniques[u] = ":U" + strconv.Itoa(len(uniques)+1)
			}
			return uniques[u]
		})
		l = reSerial.ReplaceAllStringFunc(l, func(m string) string {
			k, v, _ := strings.Cut(m, "=")
			if _, ok := serials[v]; !ok {
				serials[v] = "S" + strconv.Itoa(len(serials)+1)
			}
			return k + "=" + serials[v]
		})
		lines[i] = strings.TrimRight(l, " \t")
	}
	return strings.Join(lines, "\n")
}
