//! `time = { days = [...], from = "HH:MM", to = "HH:MM", tz = "Area/City" }`:
//! a rule that only matches inside a weekly window, in a named time zone
//! (from the system's tz database).
use jiff::Timestamp;
use jiff::tz::TimeZone;

#[derive(Clone, Debug)]
pub struct TimeWindow {
    /// Monday = 0.
    days: [bool; 7],
    from_min: u16,
    to_min: u16,
    tz: TimeZone,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl TimeWindow {
    pub fn parse(
        days: Option<&[String]>,
        from: &str,
        to: &str,
        tz: Option<&str>,
    ) -> Result<Self, String> {
        let mut set = [days.is_none(); 7];
        for d in days.unwrap_or_default() {
            let i = DAYS
                .iter()
                .position(|x| x.eq_ignore_ascii_case(&d[..d.len().min(3)]) && d.len() >= 3)
                .ok_or_else(|| {
                    format!("unknown day {d:?}; use mon, tue, wed, thu, fri, sat, sun")
                })?;
            set[i] = true;
        }
        let tz = match tz {
            None | Some("UTC") => TimeZone::UTC,
            Some(name) => TimeZone::get(name).map_err(|e| format!("time zone {name:?}: {e}"))?,
        };
        let from_min = minutes(from)?;
        let to_min = minutes(to)?;
        if from_min == to_min {
            return Err(format!("empty time window {from}-{to}"));
        }
        Ok(TimeWindow {
            days: set,
            from_min,
            to_min,
            tz,
        })
    }

    /// Inside the window. A window that crosses midnight (22:00-06:00)
    /// belongs to the day it starts on.
    pub fn contains(&self, now: Timestamp) -> bool {
        let z = now.to_zoned(self.tz.clone());
        let day = z.weekday().to_monday_zero_offset() as usize;
        let m = z.hour() as u16 * 60 + z.minute() as u16;
        if self.from_min < self.to_min {
            self.days[day] && (self.from_min..self.to_min).contains(&m)
        } else {
            let yesterday = (day + 6) % 7;
            (self.days[day] && m >= self.from_min) || (self.days[yesterday] && m < self.to_min)
        }
    }
}

fn minutes(s: &str) -> Result<u16, String> {
    let err = || format!("{s:?} is not a time of day (HH:MM, 00:00-24:00)");
    let (h, m) = s.split_once(':').ok_or_else(err)?;
    let (h, m): (u16, u16) = (h.parse().map_err(|_| err())?, m.parse().map_err(|_| err())?);
    if m > 59 || h > 24 || (h == 24 && m != 0) {
        return Err(err());
    }
    Ok(h * 60 + m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn office_hours_in_a_time_zone() {
        let days: Vec<String> = ["mon", "tue", "wed", "thu", "fri"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let w = TimeWindow::parse(Some(&days), "09:00", "18:00", Some("Europe/Berlin")).unwrap();
        // 2026-01-05 is a Monday; Berlin is UTC+1 in winter.
        assert!(w.contains(at("2026-01-05T08:30:00Z")));
        assert!(!w.contains(at("2026-01-05T07:30:00Z")));
        assert!(!w.contains(at("2026-01-05T17:00:00Z")));
        assert!(!w.contains(at("2026-01-10T10:00:00Z"))); // Saturday
    }

    #[test]
    fn overnight_windows_belong_to_their_start_day() {
        let days = vec!["fri".to_string()];
        let w = TimeWindow::parse(Some(&days), "22:00", "06:00", None).unwrap();
        assert!(w.contains(at("2026-01-09T23:00:00Z"))); // Friday night
        assert!(w.contains(at("2026-01-10T05:00:00Z"))); // Saturday early
        assert!(!w.contains(at("2026-01-10T23:00:00Z")));
    }

    #[test]
    fn bad_input_is_explained() {
        assert!(
            TimeWindow::parse(None, "9", "10:00", None)
                .unwrap_err()
                .contains("HH:MM")
        );
        assert!(
            TimeWindow::parse(None, "09:00", "10:00", Some("Mars/Base"))
                .unwrap_err()
                .contains("Mars/Base")
        );
        let d = vec!["funday".to_string()];
        assert!(
            TimeWindow::parse(Some(&d), "09:00", "10:00", None)
                .unwrap_err()
                .contains("funday")
        );
    }
}
