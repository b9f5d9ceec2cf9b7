//! The figures are real PNGs of the requested size with something drawn in them, and bad
//! input is a typed error, not a panic.

use flate2::read::ZlibDecoder;
use std::io::Read;
use vqkit_plot::log::{self, XAxis};
use vqkit_plot::{Error, Figure, ImageRow, Mark, Panel, Series, png_size};

/// The RGB pixels of a PNG this crate wrote (one IDAT, filter 0 on every row).
fn pixels(png: &[u8]) -> (u32, u32, Vec<u8>) {
    let (w, h) = png_size(png).expect("a PNG signature and IHDR");
    assert_eq!(&png[24..26], &[8, 2], "8-bit RGB");
    let mut at = 8;
    let mut idat = Vec::new();
    while at + 8 <= png.len() {
        let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
        if &png[at + 4..at + 8] == b"IDAT" {
            idat.extend_from_slice(&png[at + 8..at + 8 + len]);
        }
        at += 12 + len;
    }
    let mut raw = Vec::new();
    ZlibDecoder::new(&idat[..]).read_to_end(&mut raw).unwrap();
    assert_eq!(raw.len(), (3 * w as usize + 1) * h as usize);
    let rgb = raw
        .chunks_exact(3 * w as usize + 1)
        .flat_map(|row| row[1..].to_vec())
        .collect();
    (w, h, rgb)
}

fn count(rgb: &[u8], c: [u8; 3]) -> usize {
    rgb.chunks_exact(3).filter(|p| *p == c).count()
}

#[test]
fn a_line_chart_is_a_png_of_its_size_with_its_series_and_text_drawn() {
    let ys: Vec<f64> = (1..=50).map(|i| 1.0 / i as f64).collect();
    let p = Panel::new("loss", "step", "loss")
        .log_y()
        .with(Series::from_ys("run a", &ys, Mark::Line).colour(0))
        .with(
            Series::new(
                "nan skipped",
                vec![(1.0, f64::NAN), (2.0, 0.5), (3.0, 0.25)],
                Mark::Points,
            )
            .colour(1),
        );
    let png = Figure::grid(vec![p], 1, 640, 400).render().unwrap();
    let (w, h, rgb) = pixels(&png);
    assert_eq!((w, h), (640, 400));
    let c0 = vqkit_plot::colour(0);
    assert!(count(&rgb, [c0.0, c0.1, c0.2]) > 200, "the line is drawn");
    let c1 = vqkit_plot::colour(1);
    assert!(count(&rgb, [c1.0, c1.1, c1.2]) > 20, "the points are drawn");
    // Text (axis labels) draws dark anti-aliased pixels.
    assert!(
        rgb.chunks_exact(3)
            .filter(|p| p[0] < 60 && p[1] < 60 && p[2] < 60)
            .count()
            > 300
    );
}

#[test]
fn every_kind_of_panel_renders_in_a_grid() {
    let bars = vqkit_plot::histogram(&[0.0, 1.0, 1.0, 2.0, 2.0, 2.0], 3).unwrap();
    assert_eq!(
        bars.iter().map(|b| b.1).collect::<Vec<_>>(),
        [1.0, 2.0, 3.0]
    );
    let raster = vqkit_plot::Raster {
        x: (0.0, 1.0),
        y: (0.0, 1.0),
        nx: 2,
        ny: 2,
        class: vec![0, 1, 2, 3],
    };
    let mut vor =
        Panel::new("cells", "x", "y").with(Series::new("pts", vec![(0.2, 0.3)], Mark::Points));
    vor.raster = Some(raster);
    let panels = vec![
        Panel::new("hist", "v", "count").with(Series::new("", bars, Mark::Bars)),
        vor,
        Panel::new("loglog", "k", "err")
            .log_x()
            .log_y()
            .with(Series::new(
                "a",
                vec![(1.0, 1.0), (10.0, 0.1), (100.0, 0.01)],
                Mark::LinePoints,
            ))
            .with(Series::new(
                "ref",
                vec![(1.0, 2.0), (100.0, 0.02)],
                Mark::Dashed,
            )),
    ];
    // Bars on a log axis stand on the panel's bottom.
    let mut panels = panels;
    panels.push(
        Panel::new("log bars", "code", "count")
            .log_y()
            .with(Series::new(
                "",
                vec![(0.0, 100.0), (1.0, 10.0), (2.0, 1.0)],
                Mark::Bars,
            )),
    );
    let png = Figure::grid(panels, 2, 300, 250)
        .title("grid")
        .render()
        .unwrap();
    assert_eq!(png_size(&png), Some((600, 500)));
}

#[test]
fn empty_or_non_finite_input_is_an_error() {
    let empty = Panel::new("nothing", "x", "y").with(Series::new("a", vec![], Mark::Line));
    let e = Figure::grid(vec![empty], 1, 200, 200).render().unwrap_err();
    assert!(matches!(e, Error::Empty { .. }), "{e}");
    assert!(e.to_string().contains("nothing"));
    let nan = Panel::new("nan", "x", "y").with(Series::new(
        "a",
        vec![(f64::NAN, 1.0), (1.0, f64::INFINITY)],
        Mark::Line,
    ));
    assert!(matches!(
        Figure::grid(vec![nan], 1, 200, 200).render(),
        Err(Error::Empty { .. })
    ));
    let neg = Panel::new("neg", "x", "y").log_y().with(Series::new(
        "a",
        vec![(1.0, -1.0), (2.0, 0.0)],
        Mark::Line,
    ));
    let e = Figure::grid(vec![neg], 1, 200, 200).render().unwrap_err();
    assert!(e.to_string().contains("log axis"), "{e}");
    assert!(matches!(
        Figure::grid(vec![], 1, 200, 200).render(),
        Err(Error::Empty { .. })
    ));
    let ok = Panel::new("ok", "x", "y").with(Series::new("a", vec![(0.0, 1.0)], Mark::Points));
    assert!(matches!(
        Figure::grid(vec![ok], 1, 0, 200).render(),
        Err(Error::Invalid { .. })
    ));
    assert!(vqkit_plot::histogram(&[f64::NAN], 4).is_err());
    assert!(vqkit_plot::histogram(&[1.0], 0).is_err());
}

#[test]
fn an_unwritable_path_is_an_error_naming_it() {
    let ok =
        Panel::new("ok", "x", "y").with(Series::new("a", vec![(0.0, 1.0), (1.0, 2.0)], Mark::Line));
    let path = std::path::Path::new("/nonexistent-dir-vqkit/fig.png");
    let e = Figure::grid(vec![ok], 1, 200, 200).save(path).unwrap_err();
    assert!(e.to_string().contains("/nonexistent-dir-vqkit"), "{e}");
}

#[test]
fn an_image_grid_places_pixels_and_checks_shapes() {
    let white = vec![1.0f32; 4 * 3];
    let rows = vec![
        ImageRow {
            label: "input".into(),
            images: vec![white.clone(), vec![0.0; 12]],
        },
        ImageRow {
            label: "level 1".into(),
            images: vec![white],
        },
    ];
    let png = vqkit_plot::image_grid(&rows, 4, 3, 5, Some("t")).unwrap();
    let (w, h, rgb) = pixels(&png);
    assert!(w > 2 * 15 && h > 2 * 20);
    assert!(
        count(&rgb, [0, 0, 0]) >= 4 * 3 * 25,
        "the black image is drawn scaled"
    );
    let bad = vec![ImageRow {
        label: "x".into(),
        images: vec![vec![0.0; 5]],
    }];
    assert!(matches!(
        vqkit_plot::image_grid(&bad, 4, 3, 1, None),
        Err(Error::Invalid { .. })
    ));
    assert!(matches!(
        vqkit_plot::image_grid(&[], 4, 3, 1, None),
        Err(Error::Empty { .. })
    ));
}

const LOG: &str = r#"{"kind":"header","command":"rq-kmeans","version":"0.1.0","args":{"k":4}}
{"kind":"log","command":"rq-kmeans","step":1,"elapsed_s":0.1,"mse":2.0,"perplexity":[3.0,2.0],"backend":"cpu"}
{"kind":"log","command":"rq-kmeans","step":2,"elapsed_s":0.2,"mse":1.0,"perplexity":[3.5,null]}

{"kind":"summary","mse":1.0}
"#;

#[test]
fn a_log_is_parsed_with_levels_expanded_and_nulls_skipped() {
    let run = log::parse("a.jsonl", LOG).unwrap();
    assert_eq!(run.command.as_deref(), Some("rq-kmeans"));
    assert_eq!(
        run.metric_names(),
        ["mse", "perplexity[0]", "perplexity[1]"]
    );
    assert_eq!(run.curve("perplexity[1]", XAxis::Step), [(1.0, 2.0)]);
    assert_eq!(run.curve("mse", XAxis::ElapsedS), [(0.1, 2.0), (0.2, 1.0)]);
    let runs = vec![("a".to_string(), run.clone()), ("b".to_string(), run)];
    let ps = log::panels(&runs, None, XAxis::Step, false).unwrap();
    assert_eq!(
        ps.iter().map(|p| p.title.as_str()).collect::<Vec<_>>(),
        ["mse", "perplexity"]
    );
    assert_eq!(ps[1].series.len(), 4);
    assert_eq!(ps[1].series[3].label, "b [1]");
    let one = log::panels(
        &runs,
        Some(&["perplexity[0]".to_string()]),
        XAxis::Step,
        true,
    )
    .unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].series.len(), 2);
    let e = log::panels(&runs, Some(&["nope".to_string()]), XAxis::Step, false).unwrap_err();
    assert!(e.to_string().contains("mse, perplexity"), "{e}");
    let e = log::panels(&runs, None, XAxis::Epoch, false).unwrap_err();
    assert!(e.to_string().contains("no record has \"epoch\""), "{e}");
}

#[test]
fn an_unfinished_last_line_of_a_running_log_is_passed_over() {
    let text = format!("{LOG}{{\"kind\":\"log\",\"step\":3,\"ms");
    let run = log::parse(
        "a.jsonl",
        &text.replace("{\"kind\":\"summary\",\"mse\":1.0}\n", ""),
    )
    .unwrap();
    assert_eq!(run.records.len(), 2);
    // With its newline, the same line is an error.
    let e = log::parse("a.jsonl", "{\"kind\":\"log\",\"step\":3,\"ms\n").unwrap_err();
    assert!(e.to_string().starts_with("a.jsonl:1: not JSON"), "{e}");
}

#[test]
fn position_counters_are_drawn_only_when_asked_for() {
    let text = "{\"kind\":\"log\",\"step\":0,\"objective\":3.5,\"restart\":0,\"iter\":0,\"repaired\":0}\n\
                {\"kind\":\"log\",\"step\":1,\"objective\":2.5,\"restart\":0,\"iter\":1,\"repaired\":1}\n";
    let runs = vec![("k".to_string(), log::parse("k.jsonl", text).unwrap())];
    let ps = log::panels(&runs, None, XAxis::Step, false).unwrap();
    let titles: Vec<&str> = ps.iter().map(|p| p.title.as_str()).collect();
    assert_eq!(titles, ["objective", "repaired"]);
    let iter = log::panels(&runs, Some(&["iter".to_string()]), XAxis::Step, false).unwrap();
    assert_eq!(iter[0].series[0].points, [(0.0, 0.0), (1.0, 1.0)]);
}

#[test]
fn a_malformed_log_names_its_file_and_line() {
    let cases = [
        (
            "{\"kind\":\"log\",\"step\":1,\"mse\":1}\n{not json\n",
            2,
            "not JSON",
        ),
        ("[1,2]\n", 1, "not a JSON object"),
        ("{\"step\":1}\n", 1, "no \"kind\""),
        ("{\"kind\":\"log\",\"mse\":1}\n", 1, "without \"step\""),
        ("{\"kind\":\"log\",\"step\":-1}\n", 1, "non-negative"),
        (
            "{\"kind\":\"log\",\"step\":3}\n{\"kind\":\"log\",\"step\":2}\n",
            2,
            "must not decrease",
        ),
        (
            "{\"kind\":\"log\",\"step\":1,\"u\":[1,\"x\"]}\n",
            1,
            "\"u\"[1]",
        ),
        ("{\"kind\":\"weird\"}\n", 1, "unknown kind"),
        ("", 1, "no \"kind\":\"log\" record"),
        ("{\"kind\":\"header\"}\n", 1, "no \"kind\":\"log\" record"),
    ];
    for (text, line, needle) in cases {
        let e = log::parse("f.jsonl", text).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!("f.jsonl:{line}: ")),
            "{text:?}: {msg}"
        );
        assert!(msg.contains(needle), "{text:?}: {msg}");
    }
}
